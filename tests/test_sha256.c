// test_sha256.c: SHA-256 against the FIPS 180-4 example vectors and Python's hashlib (on the
// tokenizer file the data tools hash, when ../shared is present).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/sha256.h"
#include "test_util.h"

int main(int argc, char **argv) {
    TestCounts tc = {0};
    char hex[65];
    sha256_hex("abc", 3, hex);
    T_CHECK(&tc, strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0, "abc: %s", hex);
    sha256_hex("", 0, hex);
    T_CHECK(&tc, strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0, "empty: %s", hex);
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";  // 56 bytes: padding spills
    sha256_hex(two, strlen(two), hex);
    T_CHECK(&tc, strcmp(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1") == 0, "448-bit: %s", hex);
    char *million = malloc(1000000);
    memset(million, 'a', 1000000);
    sha256_hex(million, 1000000, hex);
    free(million);
    T_CHECK(&tc, strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0, "1M a: %s", hex);
    // the real tokenizer file vs Python's hashlib, when both are at hand
    if (argc > 1) {
        char path[4096], cmd[8300];
        snprintf(path, sizeof path, "%s/../shared/data/tokenizers/llama3/tokenizer.json", argv[1]);
        snprintf(cmd, sizeof cmd, "python3 -c \"import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())\" '%s' 2>/dev/null", path);
        FILE *p = popen(cmd, "r");
        char want[80] = "";
        if (p && fgets(want, sizeof want, p)) {
            want[strcspn(want, "\n")] = '\0';
            Error err;
            T_CHECK(&tc, sha256_file_hex(path, hex, &err) == 0 && strcmp(hex, want) == 0, "tokenizer.json: %s vs %s", hex,
                    want);
        }
        if (p) pclose(p);
    }
    return t_finish(&tc, "test_sha256");
}
