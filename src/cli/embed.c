/*
 * embed.c - `medsearch embed IMAGE...`: the feature vector of each image.
 *
 * Images are read, prepared as the model asks (image_prepare) and run in
 * batches (--batch, default 16). Vectors are L2-normalised as for search
 * unless --raw. Output: one line per image ("PATH<TAB>v1 v2 ..."), a JSON
 * document with --json, or raw float32 (little-endian, n x dim, in the
 * order of the successful images) to a file with --out. --dump-input writes
 * the prepared input tensors (n x 3 x S x S float32, NCHW) for checks
 * against other implementations. An image that cannot be read or decoded
 * is reported on stderr (and in the JSON) and the others go on; the exit
 * code is then 1.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "image/image.h"
#include "model/model.h"
#include "util/text.h"

typedef struct embed_run {
    const cli_command *cmd;
    model *m;
    image_limits lim;
    int batch, raw, json, dim, size;
    const char *out_path, *dump_path;
    FILE *out, *dump;
    float *in, *vec;
    const char **names;     /* images of the current batch */
    int n;                  /* in the current batch */
    int done, failed, printed;
} embed_run;

static const char about[] =
    "Prints the feature vector of each image, computed by the CNN of the model as for search:\n"
    "the image is prepared as the model asks (grey, resized whole to the input size, the\n"
    "model's normalisation) and its vector L2-normalised (unless --raw). One line per image\n"
    "(PATH, a tab, then the values), JSON with --json, or raw float32 to a file with --out.\n"
    "The feature is the model's own output unless --pool says otherwise (--pool auto: what a\n"
    "new collection stores, GeM where the model ends in a global average pool).";

/* A JSON string literal (escaped by jansson), malloc'd; "\"?\"" when out of memory. */
static char *jstr(const char *s)
{
    json_t *j = cli_json_text(s);
    char *out = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    json_decref(j);
    return out ? out : strdup("\"?\"");
}

static void report_error(embed_run *r, const char *path, const ms_err *err)
{
    char shown[4096];
    r->failed++;
    fprintf(stderr, "medsearch embed: %s: %s\n", ms_text_printable(shown, sizeof shown, path), err->msg);
    if (r->json && !r->out) {
        json_t *o = json_pack("{s:o, s:{s:s, s:s}}", "image", cli_json_text(path), "error", "code", ms_code_name(err->code),
                              "message", err->msg);
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (s)
            printf("%s    %s", r->printed++ ? ",\n" : "", s);
        free(s);
        json_decref(o);
    }
}

static void print_vector(embed_run *r, const char *path, const float *v)
{
    if (r->json) {
        /* the path through jansson for escaping; the numbers by hand (%.9g round-trips a float) */
        char *ps = jstr(path);
        printf("%s    {\"image\": %s, \"vector\": [", r->printed++ ? ",\n" : "", ps ? ps : "\"?\"");
        for (int k = 0; k < r->dim; k++)
            printf("%s%.9g", k ? ", " : "", (double)v[k]);
        printf("]}");
        free(ps);
        return;
    }
    char shown[4096]; /* the text output shows a name's control characters as '?' (docs/cli.md) */
    printf("%s\t", ms_text_printable(shown, sizeof shown, path));
    for (int k = 0; k < r->dim; k++)
        printf("%s%.9g", k ? " " : "", (double)v[k]);
    printf("\n");
}

/* Runs the prepared batch and writes its vectors. 0 or an exit code. */
static int flush(embed_run *r)
{
    if (!r->n)
        return 0;
    ms_err err = {0};
    if (model_forward(r->m, r->in, r->n, r->vec, &err)) {
        cli_error(r->cmd, &err);
        return cli_exit_code(err.code);
    }
    if (!r->raw)
        model_l2_normalise(r->vec, r->n, r->dim);
    size_t per_in = (size_t)3 * r->size * r->size;
    if (r->dump && fwrite(r->in, sizeof(float) * per_in, (size_t)r->n, r->dump) != (size_t)r->n) {
        fprintf(stderr, "medsearch embed: cannot write %s\n", r->dump_path);
        return 1;
    }
    if (r->out) {
        if (fwrite(r->vec, sizeof(float) * (size_t)r->dim, (size_t)r->n, r->out) != (size_t)r->n) {
            fprintf(stderr, "medsearch embed: cannot write %s\n", r->out_path);
            return 1;
        }
    } else {
        for (int i = 0; i < r->n; i++)
            print_vector(r, r->names[i], r->vec + (size_t)i * r->dim);
    }
    r->done += r->n;
    r->n = 0;
    return 0;
}

static int add_image(embed_run *r, const char *path)
{
    ms_err err = {0};
    unsigned char *bytes = NULL;
    size_t len = 0;
    size_t per_in = (size_t)3 * r->size * r->size;
    int rc = cli_read_file(path, r->lim.max_bytes, &bytes, &len, &err);
    if (!rc)
        rc = image_prepare(bytes, len, &r->lim, model_prep(r->m), r->in + (size_t)r->n * per_in, NULL, &err);
    free(bytes);
    if (rc) {
        /* The JSON lists the images in the order given: the batch before
         * this failure goes out first. */
        int code = r->json && !r->out ? flush(r) : 0;
        report_error(r, path, &err);
        return code;
    }
    r->names[r->n++] = path;
    return r->n == r->batch ? flush(r) : 0;
}

static int open_outputs(embed_run *r)
{
    if (r->out_path && !(r->out = fopen(r->out_path, "wb"))) {
        fprintf(stderr, "medsearch embed: cannot create %s\n", r->out_path);
        return 1;
    }
    if (r->dump_path && !(r->dump = fopen(r->dump_path, "wb"))) {
        fprintf(stderr, "medsearch embed: cannot create %s\n", r->dump_path);
        return 1;
    }
    return 0;
}

static int close_outputs(embed_run *r, int code)
{
    if (r->out && fclose(r->out) && !code) {
        fprintf(stderr, "medsearch embed: cannot write %s\n", r->out_path);
        code = 1;
    }
    if (r->dump && fclose(r->dump) && !code) {
        fprintf(stderr, "medsearch embed: cannot write %s\n", r->dump_path);
        code = 1;
    }
    return code;
}

static int load_model(embed_run *r, const cli_common *c)
{
    char path[4096];
    ms_err err = {0};
    int rc = engine_find_model(c->model, path, sizeof path, &err);
    if (!rc && (rc = image_init(0, &err)) == 0) {
        rc = model_load(path, &c->model_opt, &r->m, &err);
        if (rc && strncmp(err.msg, path, strlen(path)))
            ms_err_prefix(&err, "%s: ", path);
    }
    if (rc) {
        cli_error(r->cmd, &err);
        return rc == MS_ENOTFOUND && !r->m ? EXIT_ENV : cli_exit_code(rc);
    }
    return 0;
}

int cmd_embed(int argc, char **argv)
{
    embed_run r;
    memset(&r, 0, sizeof r);
    r.batch = 16;
    static const cli_option opts[] = {
        {"out", 'o', CLI_STRING, NULL, "FILE", "write raw float32 vectors (n x dim, little-endian) to FILE, one row per image that succeeded, in the order given", 0, 0},
        {"raw", 0, CLI_FLAG, NULL, NULL, "do not L2-normalise (the network's output as it is)", 0, 0},
        {"batch", 'b', CLI_INT, NULL, "N", "images per forward (default 16)", 1, 256},
        {"dump-input", 0, CLI_STRING, NULL, "FILE", "also write the prepared inputs (n x 3 x S x S float32)", 0, 0},
        {0},
    };
    cli_option o[5];
    memcpy(o, opts, sizeof opts);
    o[0].value = &r.out_path;
    o[1].value = &r.raw;
    o[2].value = &r.batch;
    o[3].value = &r.dump_path;
    const cli_command cmd = {"embed", "IMAGE...", about, CLI_MODEL | CLI_JSON, o, 1, -1};
    r.cmd = &cmd;
    cli_common c;
    char **args;
    int n_args, code;
    if (!cli_parse(&cmd, argc, argv, &c, &args, &n_args, &code))
        return code;
    /* The model's feature as the graph computes it, as PyTorch or any runtime
     * would give it; --pool auto asks for a new collection's pooling. */
    if (!c.pool)
        c.model_opt.pool = MODEL_POOL_OUTPUT;
    r.json = c.json;
    if ((code = load_model(&r, &c))) {
        free(args);
        return code;
    }
    r.lim = image_default_limits();
    r.dim = model_dim(r.m);
    r.size = model_prep(r.m)->size;
    r.in = malloc((size_t)r.batch * 3 * r.size * r.size * sizeof *r.in);
    r.vec = malloc((size_t)r.batch * r.dim * sizeof *r.vec);
    r.names = malloc((size_t)r.batch * sizeof *r.names);
    if (!r.in || !r.vec || !r.names) {
        fprintf(stderr, "medsearch embed: out of memory for a batch of %d\n", r.batch);
        code = 1;
    } else {
        code = open_outputs(&r);
    }
    char *id = r.m ? jstr(model_identity(r.m)) : NULL;
    if (!code && r.json && !r.out)
        printf("{\"model\": %s, \"dim\": %d, \"normalised\": %s, \"vectors\": [\n", id ? id : "null", r.dim,
               r.raw ? "false" : "true");
    for (int i = 0; i < n_args && !code; i++)
        code = add_image(&r, args[i]);
    if (!code)
        code = flush(&r);
    if (r.json && !r.out)
        printf("\n]}\n");
    code = close_outputs(&r, code);
    if (!code && r.out) {
        if (r.json) {
            char *op = jstr(r.out_path);
            printf("{\"model\": %s, \"dim\": %d, \"normalised\": %s, \"vectors\": %d, \"failed\": %d, \"out\": %s}\n",
                   id ? id : "null", r.dim, r.raw ? "false" : "true", r.done, r.failed, op ? op : "null");
            free(op);
        } else
            printf("wrote %d vectors of %d float32 (%s) to %s\n", r.done, r.dim, r.raw ? "raw" : "L2-normalised",
                   r.out_path);
    }
    if (!code && r.failed)
        code = 1;
    free(id);
    free(r.in);
    free(r.vec);
    free(r.names);
    free(args);
    model_free(r.m);
    return code;
}
