/*
 * test_model_resnet.c - ResNet-50 v1.5 (torchvision topology, random weights
 * with non-trivial BatchNorm statistics) end to end against PyTorch:
 * pixels -> preprocessing -> features.
 *
 * tests/tools/make_resnet50.py exports the network to ONNX twice (BatchNorm
 * folded by the exporter; BatchNormalization nodes kept, folded by us) and
 * writes random-pixel PNGs. The C side prepares them with image_prepare
 * (libvips); PyTorch then runs on exactly that prepared tensor, so the
 * feature check (1e-4 of the largest value) measures the CNN alone. The
 * prepared tensor is checked separately against PIL's preparation of the
 * documented steps, with a resize tolerance (libvips and PIL resample a
 * little differently). Skips when /usr/bin/python3 lacks torch.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "image/image.h"
#include "model/model.h"
#include "unit/model_test_util.h"

#define TOOL "tests/tools/make_resnet50.py"
#define S 224
#define MAXIMG 8
#define DIM 2048

static char dir[512];
static int n_img;
static char names[MAXIMG][64];
static float *prepared; /* n_img x 3 x S x S, from image_prepare */
static float *torch_feat;

static void pathf(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", dir, name);
}

static model *load(const char *name)
{
    char p[1024];
    pathf(p, sizeof p, name);
    model *m = NULL;
    ms_err err = {0};
    if (model_load(p, NULL, &m, &err))
        fail_msg("%s: %s", name, err.msg);
    return m;
}

/* Both exports ask for the same preparation: the folded one by the
 * ImageNet default, the other by its medsearch.* metadata. */
static void test_preprocessing(void **state)
{
    (void)state;
    model *a = load("resnet50_folded.onnx"), *b = load("resnet50_bn.onnx");
    assert_int_equal(model_prep_from_metadata(a), 0);
    assert_int_equal(model_prep_from_metadata(b), 1);
    assert_non_null(strstr(model_describe(a), "ImageNet convention"));
    const image_prep *pa = model_prep(a), *pb = model_prep(b);
    assert_int_equal(pa->size, S);
    assert_int_equal(pb->size, S);
    for (int c = 0; c < 3; c++) {
        assert_true(fabsf(pa->mean[c] - pb->mean[c]) < 1e-4f);
        assert_true(fabsf(pa->scale[c] - pb->scale[c]) < 1e-7f);
    }
    assert_true(fabsf(pa->mean[0] - 123.675f) < 1e-3f && fabsf(pa->scale[2] * 57.375f - 1) < 1e-6f);
    assert_int_equal(model_dim(a), DIM);
    model_free(a);
    model_free(b);
}

/* C preparation vs PIL's preparation of the documented steps (values in
 * normalised units; one grey level is about 0.017): exact for the 224 x 224
 * image (nothing to resample), close when down-scaling. Up-scaling white
 * noise only gets a sanity bound: libvips interpolates up-scales with its
 * own kernel and pixel-centre convention, and on noise every interpolator
 * differs from PIL's Lanczos by tens of grey levels. The CNN checks below do
 * not depend on this: PyTorch runs on the C-prepared tensor. */
static void test_prepared_vs_pil(void **state)
{
    (void)state;
    char p[1024];
    size_t len = 0;
    pathf(p, sizeof p, "pil_prepared.f32");
    float *pil = mt_read_file(p, &len);
    size_t per = (size_t)3 * S * S;
    int ok_size = pil && len == n_img * per * sizeof(float);
    double mean[MAXIMG] = {0}, worst[MAXIMG] = {0};
    for (int i = 0; ok_size && i < n_img; i++) {
        for (size_t k = 0; k < per; k++) {
            double d = fabs((double)prepared[i * per + k] - pil[i * per + k]);
            mean[i] += d;
            worst[i] = d > worst[i] ? d : worst[i];
        }
        mean[i] /= (double)per;
        print_message("%s: prepared vs PIL: mean |diff| %.4f, max %.4f (normalised units)\n", names[i], mean[i],
                      worst[i]);
    }
    free(pil);
    assert_true(ok_size);
    /* images.txt order: 224x224, 300x260 (down), 97x120 (up), 256x256 RGB-stored grey (down) */
    assert_true(worst[0] < 1e-5);
    assert_true(mean[1] < 0.05 && worst[1] < 1.0);
    assert_true(mean[2] < 1.0);
    assert_true(mean[3] < 0.05 && worst[3] < 1.0);
}

static void check_model(const char *file, int expect_bn_folded)
{
    model *m = load(file);
    ms_err err = {0};
    float *feat = malloc((size_t)n_img * DIM * sizeof *feat);
    assert_non_null(feat);
    /* all images in one batch */
    assert_int_equal(model_forward(m, prepared, n_img, feat, &err), 0);
    for (int i = 0; i < n_img; i++) {
        double e = mt_rel_err(feat + (size_t)i * DIM, torch_feat + (size_t)i * DIM, DIM);
        print_message("%s %s batch %d: max error %.2e of the largest value\n", file, names[i], n_img, e);
        assert_true(e <= 1e-4);
    }
    /* one at a time */
    for (int i = 0; i < n_img; i++) {
        assert_int_equal(model_forward(m, prepared + (size_t)i * 3 * S * S, 1, feat, &err), 0);
        double e = mt_rel_err(feat, torch_feat + (size_t)i * DIM, DIM);
        assert_true(e <= 1e-4);
    }
    char expect[64];
    snprintf(expect, sizeof expect, "%d BatchNorm folded", expect_bn_folded);
    printf("%s", model_describe(m));
    assert_non_null(strstr(model_describe(m), expect));
    assert_non_null(strstr(model_describe(m), "16 residual adds fused"));
    /* ResNet-50: about 4.1 G multiply-adds */
    assert_true(model_flops_per_image(m) > 8.0e9 && model_flops_per_image(m) < 8.4e9);
    free(feat);
    model_free(m);
}

static void test_folded_by_exporter(void **state)
{
    (void)state;
    check_model("resnet50_folded.onnx", 0);
}

static void test_batchnorm_kept(void **state)
{
    (void)state;
    check_model("resnet50_bn.onnx", 53);
}

static int setup(void)
{
    char cmd[4096], p[1024];
    if (!mt_exists(TOOL))
        return fprintf(stderr, "%s not found (run from the repository root)\n", TOOL), -1;
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s export '%s' >'%s/export.log' 2>&1", TOOL, dir, dir);
    if (mt_run(cmd))
        return fprintf(stderr, "%s export failed (see %s/export.log)\n", TOOL, dir), -1;
    pathf(p, sizeof p, "images.txt");
    FILE *f = fopen(p, "r");
    if (!f)
        return -1;
    while (n_img < MAXIMG && fscanf(f, "%63s", names[n_img]) == 1)
        n_img++;
    fclose(f);
    ms_err err = {0};
    if (image_init(0, &err))
        return fprintf(stderr, "image_init: %s\n", err.msg), -1;
    image_prep prep = {S, {123.675f, 116.28f, 103.53f}, {1 / 58.395f, 1 / 57.12f, 1 / 57.375f}};
    image_limits lim = image_default_limits();
    prepared = malloc((size_t)n_img * 3 * S * S * sizeof *prepared);
    for (int i = 0; i < n_img && prepared; i++) {
        size_t len;
        pathf(p, sizeof p, names[i]);
        void *bytes = mt_read_file(p, &len);
        int rc = bytes ? image_prepare(bytes, len, &lim, &prep, prepared + (size_t)i * 3 * S * S, NULL, &err) : -1;
        free(bytes);
        if (rc)
            return fprintf(stderr, "image_prepare %s: %s\n", names[i], err.msg), -1;
    }
    pathf(p, sizeof p, "c_prepared.f32");
    if (!prepared || mt_write_file(p, prepared, (size_t)n_img * 3 * S * S * sizeof *prepared))
        return -1;
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s forward '%s' '%s/c_prepared.f32' %d '%s/torch.f32' >>'%s/export.log' 2>&1",
             TOOL, dir, dir, n_img, dir, dir);
    if (mt_run(cmd))
        return fprintf(stderr, "%s forward failed\n", TOOL), -1;
    size_t len;
    pathf(p, sizeof p, "torch.f32");
    torch_feat = mt_read_file(p, &len);
    if (!torch_feat || len != (size_t)n_img * DIM * sizeof(float))
        return -1;
    return 0;
}

int main(void)
{
    if (!mt_python_has("torch,torchvision,onnx,PIL,numpy")) {
        printf("skip: /usr/bin/python3 lacks torch, torchvision, onnx, PIL or numpy (Debian python3-torch etc.)\n");
        return SKIP_EXIT;
    }
    char *d = mt_tempdir();
    if (!d) {
        fprintf(stderr, "cannot make a temporary directory\n");
        return 1;
    }
    snprintf(dir, sizeof dir, "%s", d);
    int rc;
    if (setup()) {
        rc = 1;
    } else {
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_preprocessing),
            cmocka_unit_test(test_prepared_vs_pil),
            cmocka_unit_test(test_folded_by_exporter),
            cmocka_unit_test(test_batchnorm_kept),
        };
        rc = cmocka_run_group_tests(tests, NULL, NULL);
    }
    free(prepared);
    free(torch_feat);
    mt_rmtree(dir);
    return rc;
}
