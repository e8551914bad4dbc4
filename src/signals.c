// signals.c: the stop-signal flag.
#include "actlora/signals.h"

#include <string.h>

volatile sig_atomic_t actlora_stop_signal = 0;

static void on_stop(int sig) { actlora_stop_signal = sig; }

void signals_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;  // interrupted reads/writes resume; a second signal just sets the flag again
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}
