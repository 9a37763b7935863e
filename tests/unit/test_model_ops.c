/*
 * test_model_ops.c - every supported op and attribute variant against
 * PyTorch: tests/tools/make_op_models.py builds small ONNX graphs with
 * onnx.helper and computes their outputs with torch.nn.functional; the C
 * runtime must match within 1e-4 of the largest value, for a batch of 3
 * and for each image alone. Graphs MedSearch must refuse are loaded too:
 * the error must carry the expected code and name the op and the node.
 * Skips when /usr/bin/python3 lacks onnx, torch or numpy.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "model/model.h"
#include "unit/model_test_util.h"

#define TOOL "tests/tools/make_op_models.py"

static char dir[512];

static int code_of(const char *name)
{
    static const struct {
        const char *n;
        int c;
    } codes[] = {{"FORMAT", MS_EFORMAT}, {"UNSUPPORTED", MS_EUNSUPPORTED}, {"TOOBIG", MS_ETOOBIG},
                 {"NOTFOUND", MS_ENOTFOUND}, {"INVAL", MS_EINVAL}};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (!strcmp(codes[i].n, name))
            return codes[i].c;
    return 1;
}

/* The graph's output `out` is named as the feature: a Gemm after a global
 * pool is what some cases test, not a classifier head to leave out. */
static int check_ok(const char *name, int n, int s, int k, const char *out)
{
    char p[1024];
    size_t len_in, len_out;
    snprintf(p, sizeof p, "%s/%s.in.f32", dir, name);
    float *in = mt_read_file(p, &len_in);
    snprintf(p, sizeof p, "%s/%s.out.f32", dir, name);
    float *want = mt_read_file(p, &len_out);
    snprintf(p, sizeof p, "%s/%s.onnx", dir, name);
    float *got = malloc((size_t)n * (size_t)k * sizeof *got);
    model_options o;
    model_options_init(&o);
    o.input_size = s;
    o.output = out;
    model *m = NULL;
    ms_err err = {0};
    int fails = 0;
    if (!in || !want || !got || len_in != (size_t)n * 3 * s * s * 4 || len_out != (size_t)n * k * 4) {
        print_error("%s: reference files missing or of the wrong size\n", name);
        fails++;
    } else if (model_load(p, &o, &m, &err)) {
        print_error("%s: load failed: %s\n", name, err.msg);
        fails++;
    } else if (model_dim(m) != k) {
        print_error("%s: dim %d, expected %d\n", name, model_dim(m), k);
        fails++;
    } else if (model_forward(m, in, n, got, &err)) {
        print_error("%s: forward failed: %s\n", name, err.msg);
        fails++;
    } else {
        double e = mt_rel_err(got, want, (size_t)n * k);
        for (int i = 0; i < n && !fails; i++) {
            float *one = malloc((size_t)k * sizeof *one);
            if (!one || model_forward(m, in + (size_t)i * 3 * s * s, 1, one, &err))
                fails++;
            else if (mt_rel_err(one, want + (size_t)i * k, (size_t)k) > 1e-4)
                fails++;
            free(one);
        }
        print_message("%-28s batch %d: max error %.2e of the largest value%s\n", name, n, e,
                      fails ? "; batch-1 forward differs" : "");
        if (e > 1e-4)
            fails++;
    }
    model_free(m);
    free(in);
    free(want);
    free(got);
    return fails;
}

/* Loading case `name`, with `output` named as the feature (NULL: the
 * default), must fail with `code` and a message holding each of `words`. */
static int check_error(const char *name, const char *output, const char *code, char *words)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s.onnx", dir, name);
    model *m = NULL;
    ms_err err = {0};
    model_options o;
    model_options_init(&o);
    o.output = output;
    int rc = model_load(p, &o, &m, &err);
    int fails = rc != code_of(code);
    for (char *w = strtok(words, " \n"); w; w = strtok(NULL, " \n"))
        if (!strstr(err.msg, w))
            fails++;
    print_message("%-28s refused (%d): %s%s\n", name, rc, err.msg, fails ? "   <-- unexpected" : "");
    model_free(m);
    return fails;
}

static void test_ops(void **state)
{
    (void)state;
    char p[1024], line[1024];
    snprintf(p, sizeof p, "%s/manifest.txt", dir);
    FILE *f = fopen(p, "r");
    assert_non_null(f);
    int cases = 0, fails = 0;
    while (fgets(line, sizeof line, f)) {
        char kind[16], name[128], code[32], out[128], named[128];
        int n, s, k, used;
        if (sscanf(line, "ok %127s %d %d %d %127s", name, &n, &s, &k, out) == 5) {
            fails += check_ok(name, n, s, k, out) != 0;
            cases++;
        } else if (sscanf(line, "error_named %127s %127s %31s %n", name, named, code, &used) == 3) {
            fails += check_error(name, named, code, line + used) != 0;
            cases++;
        } else if (sscanf(line, "%15s %127s %31s %n", kind, name, code, &used) == 3 && !strcmp(kind, "error")) {
            fails += check_error(name, NULL, code, line + used) != 0;
            cases++;
        }
    }
    fclose(f);
    print_message("%d cases, %d failed\n", cases, fails);
    assert_true(cases >= 40);
    assert_int_equal(fails, 0);
}

int main(void)
{
    if (!mt_python_has("onnx,torch,numpy")) {
        printf("skip: /usr/bin/python3 lacks onnx, torch or numpy (Debian python3-onnx, python3-torch)\n");
        return SKIP_EXIT;
    }
    char *d = mt_tempdir();
    if (!d)
        return 1;
    snprintf(dir, sizeof dir, "%s", d);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s '%s' >'%s/make.log' 2>&1", TOOL, dir, dir);
    if (mt_run(cmd)) {
        fprintf(stderr, "%s failed; its log:\n", TOOL);
        snprintf(cmd, sizeof cmd, "cat '%s/make.log'", dir);
        mt_run(cmd);
        mt_rmtree(dir);
        return 1;
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_ops)};
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    mt_rmtree(dir);
    return rc;
}
