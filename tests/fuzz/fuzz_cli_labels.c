/*
 * fuzz_cli_labels.c - libFuzzer target for the metadata CSV read by
 * `medsearch ingest --labels` (labels_load): any bytes as the file, then
 * lookups by path and by base name, and every warning read back. A table
 * that loads must answer lookups with metadata the store would accept
 * (valid UTF-8, within its limits), since ingest hands it on unchanged.
 * Built and run by tests/fuzz/run.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/labels.h"
#include "fuzz_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int text_ok(const char *s)
{
    return !s || (strlen(s) <= STORE_MAX_TEXT && store_utf8_valid((const unsigned char *)s, strlen(s)));
}

static void check_meta(const store_meta *m, const char *asked)
{
    int ok = text_ok(m->patient_id) && text_ok(m->study_date) && text_ok(m->view) && m->age >= -1 &&
             m->age <= 150 && (m->sex == 0 || m->sex == 'M' || m->sex == 'F') && m->n_labels >= 0 &&
             m->n_labels <= STORE_MAX_LABELS && m->n_kv >= 0 && m->n_kv <= STORE_MAX_KV;
    for (int i = 0; ok && i < m->n_labels; i++)
        ok = m->labels[i] && m->labels[i][0] && text_ok(m->labels[i]);
    for (int i = 0; ok && i < m->n_kv; i++)
        ok = m->kv[i].key && text_ok(m->kv[i].key) && text_ok(m->kv[i].value);
    if (!ok) {
        fprintf(stderr, "fuzz_cli_labels: the row for '%s' holds metadata the store refuses\n", asked);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fuzz_file_open(data, size, path);
    if (fd < 0)
        return 0;
    labels *t = NULL;
    ms_err err;
    if (labels_load(path, &t, &err) == 0) {
        for (size_t i = 0; i < labels_n_warnings(t); i++)
            if (!labels_warning(t, i))
                abort();
        (void)labels_format_name(labels_get_format(t));
        /* names the seeds use, as paths beside the file and as base names */
        static const char *const asked[] = {"/proc/self/fd/a.png", "/proc/self/fd/images/b.png",
                                            "/proc/self/fd/00000001_000.png", "elsewhere/a.png", "c.jpg", "",
                                            "files/p10/p10000032/s50414267/02aa804e-bd.jpg", "s1/", "/s1/s",
                                            "s50414267/.jpg"};
        for (size_t i = 0; i < sizeof asked / sizeof asked[0]; i++) {
            const store_meta *m = labels_find(t, asked[i]);
            if (m)
                check_meta(m, asked[i]);
        }
        labels_free(t);
    }
    close(fd);
    return 0;
}
