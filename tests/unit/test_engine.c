/*
 * test_engine.c - the engine on an SQLite collection (the suite is in
 * test_engine_suite.h; test_engine_pg.c runs it on PostgreSQL).
 */
#include "test_engine_suite.h"

static int db_counter;

static char *suite_new_db(void)
{
    char *db = NULL;
    if (asprintf(&db, "%s/c%d.db", G.tmp, db_counter++) < 0)
        return NULL;
    return db;
}

/* Without any model in reach, the message says how to get ResNet-50. */
static void test_find_model_advice(void **state)
{
    (void)state;
    char cwd[1024], path[256];
    assert_non_null(getcwd(cwd, sizeof cwd));
    char *old_model = getenv("MEDSEARCH_MODEL") ? strdup(getenv("MEDSEARCH_MODEL")) : NULL;
    unsetenv("MEDSEARCH_MODEL");
    setenv("XDG_DATA_HOME", G.tmp, 1);
    assert_int_equal(chdir(G.tmp), 0);
    ms_err err = {0};
    assert_int_equal(engine_find_model(NULL, path, sizeof path, &err), MS_ENOTFOUND);
    assert_non_null(strstr(err.msg, "resnet50-v1-12.onnx"));
    assert_non_null(strstr(err.msg, "torchvision.models.resnet50(weights='IMAGENET1K_V1')"));
    /* the whole command fits: the message was not cut */
    const char *tail = "dynamic_axes={'input':{0:'batch'}})\"";
    size_t len = strlen(err.msg);
    assert_true(len > strlen(tail));
    assert_string_equal(err.msg + len - strlen(tail), tail);
    assert_non_null(strstr(engine_model_help(), "--pool avg"));

    /* the flag wins, and a missing file is named */
    assert_int_equal(engine_find_model("nowhere.onnx", path, sizeof path, &err), MS_ENOTFOUND);
    assert_non_null(strstr(err.msg, "nowhere.onnx"));
    /* then MEDSEARCH_MODEL, then ./models/resnet50.onnx */
    assert_int_equal(mkdir("models", 0700), 0);
    FILE *f = fopen("models/resnet50.onnx", "w");
    assert_non_null(f);
    fclose(f);
    assert_int_equal(engine_find_model(NULL, path, sizeof path, &err), 0);
    assert_string_equal(path, "models/resnet50.onnx");
    setenv("MEDSEARCH_MODEL", G.model, 1);
    assert_int_equal(engine_find_model(NULL, path, sizeof path, &err), 0);
    assert_string_equal(path, G.model);
    unlink("models/resnet50.onnx");
    rmdir("models");
    assert_int_equal(chdir(cwd), 0);
    if (old_model) {
        setenv("MEDSEARCH_MODEL", old_model, 1);
        free(old_model);
    } else {
        unsetenv("MEDSEARCH_MODEL");
    }
}

/* A database that cannot be opened is a clear error naming it. */
static void test_unusable_database(void **state)
{
    (void)state;
    engine_options o;
    engine_options_init(&o);
    char db[512];
    snprintf(db, sizeof db, "%s/no/such/dir/c.db", G.tmp);
    o.db = db;
    o.model_path = G.model;
    engine *e = NULL;
    ms_err err = {0};
    int rc = engine_open(&o, &e, NULL, &err);
    assert_true(rc == MS_EDB || rc == MS_EIO);
    assert_null(e);
    assert_non_null(strstr(err.msg, "no/such/dir"));
}

int main(void)
{
    snprintf(G.tmp, sizeof G.tmp, "%s/medsearch-engine-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(G.tmp)) {
        perror("mkdtemp");
        return 1;
    }
    int rc = run_engine_suite("engine (SQLite)");
    if (rc == 0) {
        const struct CMUnitTest more[] = {
            cmocka_unit_test(test_find_model_advice),
            cmocka_unit_test(test_unusable_database),
        };
        rc = cmocka_run_group_tests_name("engine setup", more, NULL, NULL);
    }
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", G.tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", G.tmp);
    return rc;
}
