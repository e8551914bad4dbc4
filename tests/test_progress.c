// test_progress.c: the progress lines (progress.h) and the loaders' use of them: a line per step when the
// interval is 0 (none at the end, none within the interval), the format, the ETA; the Llama
// and BERT loaders report every layer but the last (pretrained weights from the fixtures, and random ones).
#define _GNU_SOURCE  // memmem
#include <string.h>
#include <unistd.h>

#include "actlora/backend.h"
#include "actlora/hfmodel.h"
#include "actlora/model.h"
#include "actlora/progress.h"
#include "test_util.h"

// the text written to f so far
static void slurp(FILE *f, char *buf, size_t cap) {
    fflush(f);
    rewind(f);
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = 0;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

// loads the model in dir (random_init: drawn) with a progress every step; checks a line per layer but the last
static void check_loader(TestCounts *tc, const char *dir, int random_init) {
    char path[4200], buf[8192];
    snprintf(path, sizeof path, "%s/config.json", dir);
    ModelConfig mc;
    Error err;
    if (hfconfig_load(&mc, path, &err) != 0) die("%s", err.msg);
    Backend be;
    backend_cpu_init(&be, 1);
    FILE *f = tmpfile();
    Progress p;
    progress_init(&p, f, "load", "weights", 0.0);
    Model m;
    model_load(&m, &be, random_init ? "/nonexistent" : dir, &mc, 2, random_init, 7, 0, &p);
    slurp(f, buf, sizeof buf);
    int L = mc.num_hidden_layers;
    T_CHECK(tc, count_lines(buf) == L - 1, "%s (random %d): %d progress lines for %d layers, expected %d:\n%s",
            mc.model_type, random_init, count_lines(buf), L, L - 1, buf);
    for (int l = 1; l < L; l++) {
        char want[64];
        snprintf(want, sizeof want, "load    weights: layer %d of %d (", l, L);
        T_CHECK(tc, strstr(buf, want) != NULL, "%s: no line '%s' in:\n%s", mc.model_type, want, buf);
    }
    fclose(f);
    model_free(&m, &be);
    backend_free(&be);
}

int main(int argc, char **argv) {
    TestCounts tc = {0};
    const char *root = argc > 1 ? argv[1] : ".";
    char buf[4096];

    // every step printed with interval 0, except the finished one
    FILE *f = tmpfile();
    Progress p;
    progress_init(&p, f, "eval", "dev split", 0.0);
    for (long i = 0; i <= 4; i++) progress_step(&p, i, 4, "row");
    slurp(f, buf, sizeof buf);
    T_CHECK(&tc, count_lines(buf) == 4, "4 lines expected (0..3 of 4, none at 4 of 4):\n%s", buf);
    T_CHECK(&tc, strstr(buf, "eval    dev split: row 0 of 4 (0%), ") == buf, "first line: %s", buf);
    T_CHECK(&tc, strstr(buf, "eval    dev split: row 3 of 4 (75%), ") != NULL, "the 3-of-4 line:\n%s", buf);
    T_CHECK(&tc, strstr(buf, "4 of 4") == NULL, "a finished step printed:\n%s", buf);
    char *nl = strchr(buf, '\n');
    T_CHECK(&tc, nl && !memmem(buf, (size_t)(nl - buf), "ETA", 3) && strstr(nl, "of 4 (25%), ") && strstr(nl, ", ETA "),
            "no ETA before anything is done, one after:\n%s", buf);
    fclose(f);

    // the ETA extrapolates the elapsed time: 1 of 4 done after el s leaves 3 el s (to the second)
    f = tmpfile();
    progress_init(&p, f, "load", "weights", 0.0);
    usleep(200000);
    progress_step(&p, 1, 4, "layer");
    slurp(f, buf, sizeof buf);
    double el = 0.0;
    const char *s = strstr(buf, "(25%), ");
    T_CHECK(&tc, s && sscanf(s, "(25%%), %lf s", &el) == 1 && el >= 0.19 && el < 5.0, "elapsed in '%s'", buf);
    int eh = -1, em = -1, es = -1;
    const char *e = strstr(buf, ", ETA ");
    T_CHECK(&tc, e && sscanf(e, ", ETA %d:%d:%d", &eh, &em, &es) == 3 && fabs(3600.0 * eh + 60.0 * em + es - 3.0 * el) <= 1.0,
            "ETA %d:%02d:%02d for 3 x %.1f s in '%s'", eh, em, es, el, buf);
    fclose(f);

    // within the interval: nothing; a silent Progress (NULL out) and a NULL one are no-ops
    f = tmpfile();
    progress_init(&p, f, "load", "weights", 3600.0);
    for (long i = 0; i < 10; i++) progress_step(&p, i, 10, "layer");
    slurp(f, buf, sizeof buf);
    T_CHECK(&tc, buf[0] == 0, "a line within the interval: '%s'", buf);
    fclose(f);
    progress_init(&p, NULL, "load", "weights", 0.0);  // (a crash would end the test)
    progress_step(&p, 1, 2, "layer");
    progress_step(NULL, 1, 2, "layer");

    // the loaders: Llama and BERT, pretrained (the fixtures) and random
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tiny-llama", root);
    check_loader(&tc, dir, 0);
    check_loader(&tc, dir, 1);
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tiny-bert", root);
    check_loader(&tc, dir, 0);
    check_loader(&tc, dir, 1);
    return t_finish(&tc, "test_progress");
}
