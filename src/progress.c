// progress.c: periodic progress lines (progress.h).
#include "actlora/progress.h"

#include <string.h>

#include "actlora/common.h"

void progress_init(Progress *p, FILE *out, const char *tag, const char *what, double every) {
    memset(p, 0, sizeof *p);
    p->out = out;
    snprintf(p->tag, sizeof p->tag, "%s", tag);
    snprintf(p->what, sizeof p->what, "%s", what);
    p->every = every;
    p->t0 = p->last = time_now();
}

void progress_step(Progress *p, long done, long total, const char *unit) {
    if (!p || !p->out || total <= 0 || done >= total) return;
    double now = time_now();
    if (now - p->last < p->every) return;
    p->last = now;
    double el = now - p->t0, eta = done > 0 ? el * (double)(total - done) / (double)done : 0.0;
    long e = (long)(eta + 0.5);
    fprintf(p->out, "%-7s %s: %s %ld of %ld (%.0f%%), %.1f s", p->tag, p->what, unit, done, total,
            100.0 * (double)done / (double)total, el);
    if (done > 0) fprintf(p->out, ", ETA %ld:%02ld:%02ld", e / 3600, e / 60 % 60, e % 60);
    fputc('\n', p->out);
    fflush(p->out);
}
