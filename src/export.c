// export.c: PEFT adapter directory writer.
#include "actlora/export.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "actlora/safetensors.h"

static int mkdir_parents(const char *dir, Error *err) {
    char buf[4096];
    size_t n = strlen(dir);
    if (n >= sizeof buf) return error_set(err, "export directory path is too long");
    memcpy(buf, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return error_set(err, "cannot create export directory '%s': %s", buf, strerror(errno));
        buf[i] = c;
    }
    return 0;
}

// Encoder module names are not suffix-unique ("output.dense" ends "attention.output.dense"), so for
// them target_modules is a regex matching exactly the adapted modules (PEFT full-matches a string).
// Returns NULL for Llama, whose module names are unique (a list + layers_to_transform then).
static char *target_regex(const ExportTensor *t, int n) {
    if (n < 1 || strncmp(t[0].name, "model.layers.", 13) == 0) return NULL;
    size_t cap = 16;
    for (int i = 0; i < n; i++) cap += 2 * strlen(t[i].name) + 2;
    char *re = xmalloc(cap, "export target regex");
    size_t len = 0;
    re[len++] = '(';
    for (int i = 0; i < n; i++) {
        const char *suffix = strstr(t[i].name, ".lora_A.weight");
        if (!suffix) continue;  // B (same module) and the head
        if (len > 1) re[len++] = '|';
        for (const char *c = t[i].name; c < suffix; c++) {
            if (*c == '.') re[len++] = '\\';
            re[len++] = *c;
        }
    }
    re[len++] = ')';
    re[len] = '\0';
    return re;
}

int export_peft(const char *out_dir, const RunConfig *cfg, const ExportTensor *t, int n, const int *layers,
                int n_layers, Error *err) {
    if (mkdir_parents(out_dir, err)) return -1;
    StWriteTensor *wt = xcalloc((size_t)n, sizeof(StWriteTensor), "export tensors");
    char **names = xcalloc((size_t)n, sizeof(char *), "export names");
    for (int i = 0; i < n; i++) {
        size_t len = strlen(t[i].name) + 32;
        names[i] = xmalloc(len, "export name");
        snprintf(names[i], len, "base_model.model.%s", t[i].name);
        int bias = t[i].cols == 1 && strstr(t[i].name, ".bias") != NULL;  // a head bias is 1-D in PyTorch
        wt[i] = (StWriteTensor){.name = names[i], .dtype = ST_F32, .ndim = bias ? 1 : 2,
                                .shape = {t[i].rows, bias ? 0 : t[i].cols}, .data = t[i].data};
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", out_dir);
    const char *mk[] = {"format"}, *mv[] = {"pt"};
    int rc = safetensors_write(path, wt, n, mk, mv, 1, err);
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    free(wt);
    if (rc) return -1;

    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "base_model_name_or_path", cfg->model.path);
    cJSON_AddStringToObject(j, "peft_type", "LORA");
    cJSON_AddStringToObject(j, "task_type", "SEQ_CLS");
    cJSON_AddNumberToObject(j, "r", cfg->lora.r);
    cJSON_AddNumberToObject(j, "lora_alpha", cfg->lora.alpha);
    cJSON_AddNumberToObject(j, "lora_dropout", cfg->lora.dropout);
    cJSON_AddBoolToObject(j, "use_rslora", cfg->lora.rslora);
    char *re = target_regex(t, n);
    if (re) {  // the regex names the layers too; PEFT refuses layers_to_transform next to a regex
        cJSON_AddStringToObject(j, "target_modules", re);
        cJSON_AddNullToObject(j, "layers_to_transform");
        free(re);
    } else {
        cJSON *tm = cJSON_AddArrayToObject(j, "target_modules");
        for (int i = 0; i < cfg->lora.n_targets; i++)
            cJSON_AddItemToArray(tm, cJSON_CreateString(cfg->lora.targets[i]));
        cJSON *lt = cJSON_AddArrayToObject(j, "layers_to_transform");
        for (int i = 0; i < n_layers; i++) cJSON_AddItemToArray(lt, cJSON_CreateNumber(layers[i]));
    }
    cJSON *ms = cJSON_AddArrayToObject(j, "modules_to_save");
    cJSON_AddItemToArray(ms, cJSON_CreateString("classifier"));
    cJSON_AddItemToArray(ms, cJSON_CreateString("score"));
    cJSON_AddStringToObject(j, "bias", "none");
    cJSON_AddBoolToObject(j, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(j, "init_lora_weights", 1);
    cJSON_AddBoolToObject(j, "inference_mode", 1);
    cJSON_AddNullToObject(j, "layers_pattern");
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    char tmp[4300];
    snprintf(path, sizeof path, "%s/adapter_config.json", out_dir);
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    int ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f) ok = fclose(f) == 0 && ok;
    free(text);
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return error_set(err, "cannot write %s: %s", path, strerror(errno));
    }
    return 0;
}

int export_lora(const char *out_dir, const RunConfig *cfg, const LoraSet *ls, Backend *be, const int *layers,
                int n_layers, Error *err) {
    float *host = xmalloc(ls->numel * sizeof(float), "export parameters");
    be->download(be, host, ls->params, ls->numel * sizeof(float));
    int n = lora_num_tensors(ls);
    ExportTensor *t = xcalloc((size_t)n, sizeof(ExportTensor), "export tensors");
    char (*names)[160] = xcalloc((size_t)n, sizeof *names, "export names");
    for (int i = 0; i < n; i++) {
        size_t off;
        lora_tensor(ls, i, names[i], sizeof names[i], &off, &t[i].rows, &t[i].cols);
        t[i].name = names[i];
        t[i].data = host + off;
    }
    int rc = export_peft(out_dir, cfg, t, n, layers, n_layers, err);
    free(names);
    free(t);
    free(host);
    return rc;
}
