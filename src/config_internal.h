// config_internal.h: what the reading of a configuration (config.c: file, --set, command line)
// and the values of a RunConfig (config_values.c: defaults, checks, validation, printing, hash,
// diff) share: the schema table, the per-key value checks and the did-you-mean for values.
// Private to those two files.
#ifndef ACTLORA_CONFIG_INTERNAL_H
#define ACTLORA_CONFIG_INTERNAL_H

#include <stddef.h>
#include <string.h>

#include "actlora/config.h"
#include "config_keys.h"

#define NUM_KEYS ((int)(sizeof KEYS / sizeof KEYS[0]))

// "FILE:LINE: " or "--set k=v: " in front of a message; nothing when validating a RunConfig
// that was built in code.
#define WHERE_ARG(w) (w) ? (w) : "", (w) ? ": " : ""

// Length of the section part of "section.key" (0 for a name without a dot).
static inline size_t section_len(const char *name) {
    const char *dot = strchr(name, '.');
    return dot ? (size_t)(dot - name) : 0;
}

// The candidate closest to `typed` if it is close enough to suggest, else NULL (config.c).
const char *suggest_value(const char *typed, const char *const *cands);

// Per-key value checks (config_values.c). Shared by assignment (file, --set) and config_validate,
// so a RunConfig built in code gets exactly the checks a file gets. Each returns 0, or -1 with
// the error set; `where` goes in front of the message (NULL: nothing).
int check_int(const ConfigKey *k, long long v, const char *where, Error *err);
int check_double(const ConfigKey *k, double v, const char *where, Error *err);
// `what` names the value in the message: the key, or an element such as "lora.target_modules[1]".
int check_enum(const ConfigKey *k, const char *what, const char *v, const char *where, Error *err);
// Fits the field; for KT_ENUM also one of the allowed values.
int check_string(const ConfigKey *k, const char *v, const char *where, Error *err);
// Target list: each name allowed, none twice, at least one.
int check_targets(const ConfigKey *k, char (*t)[32], int n, const char *where, Error *err);

#endif
