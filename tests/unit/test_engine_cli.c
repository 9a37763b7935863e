/*
 * test_engine_cli.c - the collection commands' helpers: the labels CSV
 * reader (both formats, hostile rows), the shared option parser, and the
 * output files written whole (cli_out_open / cli_out_close).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "cli/labels.h"

#include <libdeflate.h>

static char tmp[256];

static char *write_file(const char *name, const char *text, size_t len)
{
    char *path;
    assert_true(asprintf(&path, "%s/%s", tmp, name) > 0);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    fclose(f);
    return path;
}

static labels *load(const char *name, const char *text, int expect_rc, ms_err *err)
{
    char *path = write_file(name, text, strlen(text));
    labels *t = NULL;
    assert_int_equal(labels_load(path, &t, err), expect_rc);
    free(path);
    return t;
}

static int has_warning(const labels *t, const char *needle)
{
    for (size_t i = 0; i < labels_n_warnings(t); i++)
        if (strstr(labels_warning(t, i), needle))
            return 1;
    return 0;
}

static const char *kv(const store_meta *m, const char *key)
{
    for (int i = 0; i < m->n_kv; i++)
        if (!strcmp(m->kv[i].key, key))
            return m->kv[i].value;
    return NULL;
}

/* Creates the empty file tmp/rel, and the folders on its way. */
static void touch(const char *rel)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmp, rel);
    for (char *p = strchr(path + strlen(tmp) + 1, '/'); p; p = strchr(p + 1, '/')) {
        *p = '\0';
        mkdir(path, 0700);
        *p = '/';
    }
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
}

static const store_meta *find_rel(const labels *t, const char *rel)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmp, rel);
    return labels_find(t, path);
}

/* Writes text gzip-compressed to tmp/name; returns the path (free()). */
static char *write_gz(const char *name, const char *text)
{
    struct libdeflate_compressor *c = libdeflate_alloc_compressor(6);
    assert_non_null(c);
    size_t cap = libdeflate_gzip_compress_bound(c, strlen(text));
    char *gz = malloc(cap);
    assert_non_null(gz);
    size_t n = libdeflate_gzip_compress(c, text, strlen(text), gz, cap);
    assert_true(n > 0);
    libdeflate_free_compressor(c);
    char *path = write_file(name, gz, n);
    free(gz);
    return path;
}

static void test_nih_format(void **state)
{
    (void)state;
    ms_err err = {0};
    labels *t = load("Data_Entry_2017.csv",
                     "\xEF\xBB\xBFImage Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                     "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\r\n"
                     "00000001_000.png,Cardiomegaly,0,1,058Y,M,PA,2682,2749,0.143,0.143,\r\n"
                     "00000001_001.png,Cardiomegaly|Emphysema|cardiomegaly,1,1,58,M,PA,2894,2729,0.143,0.143,\r\n"
                     "00000002_000.png,No Finding,0,2,81,F,AP,2500,2048,0.171,0.171,\r\n"
                     "00000003_000.png,Hernia,0,3,abc,F,PA,2500,2048,0.168,0.168,\r\n"
                     "00000004_000.png,Mass,0,4,412,F,PA,2500,2048\r\n"
                     "00000005_000.png,Mass,0,5,412,M,PA,2500,2048,0.168,0.168,\r\n"
                     "00000001_000.png,Effusion,0,9,30,F,PA,1,1,1,1,\r\n",
                     0, &err);
    assert_non_null(t);
    assert_int_equal(labels_get_format(t), LABELS_NIH);
    assert_int_equal(labels_rows(t), 4);
    assert_true(has_warning(t, "line 5: the age is not a number"));
    assert_true(has_warning(t, "line 6: 9 fields where the header has 12"));
    assert_true(has_warning(t, "line 7: age 412 is implausible"));
    assert_true(has_warning(t, "line 8: image 00000001_000.png is listed already (line 2)"));

    /* matched by base name wherever the file is */
    const store_meta *m = labels_find(t, "/somewhere/else/00000001_001.png");
    assert_non_null(m);
    assert_int_equal(m->n_labels, 2); /* duplicates dropped, case aside */
    assert_string_equal(m->labels[0], "Cardiomegaly");
    assert_string_equal(m->labels[1], "Emphysema");
    assert_string_equal(m->patient_id, "1");
    assert_int_equal(m->age, 58);
    assert_int_equal(m->sex, 'M');
    assert_string_equal(m->view, "PA");
    assert_string_equal(kv(m, "follow_up"), "1");
    assert_string_equal(kv(m, "OriginalImage[Width"), "2894");
    m = labels_find(t, "00000001_000.png");
    assert_int_equal(m->age, 58); /* "058Y" */
    assert_string_equal(m->labels[0], "Cardiomegaly");
    m = labels_find(t, "x/00000002_000.png");
    assert_string_equal(m->labels[0], "No Finding");
    assert_int_equal(m->sex, 'F');
    assert_int_equal(labels_find(t, "00000005_000.png")->age, -1);
    assert_null(labels_find(t, "00000003_000.png")); /* its row was bad */
    assert_null(labels_find(t, "missing.png"));
    labels_free(t);
}

static void test_generic_format(void **state)
{
    (void)state;
    ms_err err = {0};
    char dir[300];
    snprintf(dir, sizeof dir, "%s/set", tmp);
    mkdir(dir, 0700);
    labels *t = load("set/labels.csv",
                     "image,labels,pneumonia_type,patient_id,age,sex,view,study_date\n"
                     "images/a.jpeg,NORMAL,,P1,,,,2017-01-31\n"
                     "./images/b.jpeg,\"PNEUMONIA|BACTERIA\",bacteria,P2,7,female,ap,\n"
                     "other/a.jpeg,\"say \"\"hi\"\", twice\",,P3,40,M,PA,\n"
                     "\n"
                     ",NORMAL,,P4,1,M,PA,\n"
                     "images/c.jpeg,\"unterminated,,P5,1,M,PA,\n",
                     0, &err);
    assert_non_null(t);
    assert_int_equal(labels_get_format(t), LABELS_GENERIC);
    assert_int_equal(labels_rows(t), 3);
    assert_true(has_warning(t, "line 6: no image name"));
    assert_true(has_warning(t, "line 7: a quoted field is never closed"));
    /* a relative path under the CSV's folder picks its own row */
    touch("set/images/b.jpeg");
    const store_meta *m = find_rel(t, "set/images/b.jpeg");
    assert_non_null(m);
    assert_string_equal(m->patient_id, "P2");
    assert_int_equal(m->n_labels, 2);
    assert_int_equal(m->age, 7);
    assert_int_equal(m->sex, 'F');
    assert_string_equal(kv(m, "pneumonia_type"), "bacteria");
    /* two rows share the base name a.jpeg: only the relative path decides */
    touch("set/images/a.jpeg");
    m = find_rel(t, "set/images/a.jpeg");
    assert_non_null(m);
    assert_string_equal(m->patient_id, "P1");
    assert_string_equal(m->study_date, "2017-01-31");
    assert_int_equal(m->age, -1);
    assert_int_equal(m->sex, 0);
    assert_null(labels_find(t, "/elsewhere/a.jpeg"));
    touch("set/other/a.jpeg");
    m = find_rel(t, "set/other/a.jpeg");
    assert_string_equal(m->labels[0], "say \"hi\", twice");
    labels_free(t);
}

/* A spreadsheet's "CSV" where the comma is the decimal mark uses ';', and
 * tab-separated exports are common: the header's counts pick the separator. */
static void test_separators(void **state)
{
    (void)state;
    ms_err err = {0};
    labels *t = load("semicolon.csv",
                     "\xEF\xBB\xBF\r\nimage;labels;patient_id;age;site\r\n"
                     "a.png;\"Effusion|Mass\";P1;58,5;\"ward 4; east\"\r\n"
                     "b.png;No Finding;P2;7;a,b\r\n"
                     "c.png,Mass,P3,40,x\r\n",
                     0, &err);
    assert_non_null(t);
    assert_int_equal(labels_separator(t), ';');
    assert_int_equal(labels_rows(t), 2);
    assert_true(has_warning(t, "line 5: 1 fields where the header has 5"));
    const store_meta *m = labels_find(t, "a.png");
    assert_non_null(m);
    assert_int_equal(m->n_labels, 2);
    assert_int_equal(m->age, 58); /* the decimal comma */
    assert_string_equal(kv(m, "site"), "ward 4; east");
    m = labels_find(t, "b.png");
    assert_string_equal(m->labels[0], "No Finding");
    assert_string_equal(kv(m, "site"), "a,b"); /* a comma is plain text here */
    labels_free(t);

    t = load("tabs.tsv", "Image Index\tFinding Labels\tPatient ID\tPatient Age\n00000001_000.png\tNo Finding\t1\t057Y\n",
             0, &err);
    assert_non_null(t);
    assert_int_equal(labels_separator(t), '\t');
    assert_int_equal(labels_get_format(t), LABELS_NIH);
    m = labels_find(t, "00000001_000.png");
    assert_non_null(m);
    assert_string_equal(m->patient_id, "1");
    assert_int_equal(m->age, 57);
    labels_free(t);

    /* separators inside quotes do not count */
    t = load("quoted.csv", "image,labels,\"a;b;c\"\nd.png,Mass;z,1\n", 0, &err);
    assert_non_null(t);
    assert_int_equal(labels_separator(t), ',');
    assert_string_equal(labels_find(t, "d.png")->labels[0], "Mass;z");
    assert_string_equal(kv(labels_find(t, "d.png"), "a;b;c"), "1");
    labels_free(t);
    assert_null(load("mostly-semicolons.csv", "image,\"labels\";x;y\nd.png,Mass;z\n", MS_EFORMAT, &err));
    assert_non_null(strstr(err.msg, "neither"));
    t = load("age.csv", "image,labels,age\nd.png,Mass,\"58,5\"\n", 0, &err);
    assert_non_null(t);
    assert_int_equal(labels_find(t, "d.png")->age, 58);
    labels_free(t);
}

/* The 2020 edition of NIH's CSV names the sex column "Patient Sex". */
static void test_nih_patient_sex(void **state)
{
    (void)state;
    ms_err err = {0};
    labels *t = load("Data_Entry_2017_v2020.csv",
                     "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,View Position\n"
                     "00000001_000.png,Cardiomegaly,0,1,57,M,PA\n",
                     0, &err);
    assert_non_null(t);
    assert_int_equal(labels_get_format(t), LABELS_NIH);
    const store_meta *m = labels_find(t, "00000001_000.png");
    assert_non_null(m);
    assert_int_equal(m->sex, 'M');
    assert_int_equal(m->n_kv, 1); /* follow_up only: the sex is not a key/value */
    labels_free(t);
}

/* CheXpert's train.csv: paths from the folder above the CSV's, fourteen
 * observation columns of 1.0 / -1.0 / 0.0 / empty, the patient in the path. */
/* MIMIC-CXR-JPG: a labels row per study, a metadata row per image. */
static const char mimic_labels[] =
    "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,"
    "Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices\n"
    "10000032,50414267,,,,,,,,,1.0,,,,,\n"
    "10000032,53189527,,1.0,,-1.0,,,,,,,,,,\n"
    "10000764,57375967,,,1.0,,,,,,,,,-1.0,,\n"
    "10000898,5x,,,,,,,,,1.0,,,,,\n";
static const char mimic_metadata[] =
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
    "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning\n"
    "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,"
    "213014.531,CHEST (PA AND LAT),postero-anterior,Erect\n"
    "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,"
    "21800506,213014.531,CHEST (PA AND LAT),lateral,Erect\n"
    "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,10000032,53189527,CHEST (PORTABLE AP),AP,2544,3056,21800626,"
    "165500.312,CHEST (PORTABLE AP),antero-posterior,\n"
    "0c4eb1e1-b801903c-bcebe8a4-3da9cd3c-3b94a27c,10009999,59999999,,PA,1,1,21900101,0,,,\n"
    "1b2c3d4e,10009999,,,PA,1,1,21900101,0,,,\n";
static const char *const mimic_files[] = {
    "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg",
    "files/p10/p10000032/s50414267/174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962.jpg",
    "files/p10/p10000032/s53189527/2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab.jpg",
    "files/p10/p10000764/s57375967/096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4.jpg", /* not in the metadata */
    "files/p10/p10009999/s59999999/0c4eb1e1-b801903c-bcebe8a4-3da9cd3c-3b94a27c.dcm", /* no labels row */
    "files/p10/p10000898/s50771383/5d9b1b4c.jpg",                                     /* in neither */
};

static const store_meta *find_in(const labels *t, const char *dir, const char *rel)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s/%s", tmp, dir, rel);
    return labels_find(t, path);
}

static void check_mimic_study_rows(const labels *t, const char *dir)
{
    const store_meta *m = find_in(t, dir, mimic_files[0]);
    assert_non_null(m);
    assert_int_equal(m->n_labels, 1);
    assert_string_equal(m->labels[0], "No Finding");
    assert_string_equal(m->patient_id, "10000032");
    m = find_in(t, dir, mimic_files[2]);
    assert_non_null(m);
    assert_int_equal(m->n_labels, 1);
    assert_string_equal(m->labels[0], "Cardiomegaly");
    assert_string_equal(kv(m, "uncertain_findings"), "Edema");
    m = find_in(t, dir, mimic_files[3]); /* by its study folder alone */
    assert_non_null(m);
    assert_string_equal(m->labels[0], "Consolidation");
    assert_string_equal(kv(m, "uncertain_findings"), "Pneumonia");
    assert_string_equal(m->patient_id, "10000764");
    assert_null(m->view);
    assert_null(find_in(t, dir, mimic_files[5]));
    assert_null(labels_find(t, "s50414267.jpg")); /* a file name is not a folder */
}

static void test_mimic_format(void **state)
{
    (void)state;
    ms_err err = {0};
    /* the labels alone: rows per study, matched by the file's folder */
    labels *t = load("mimic-cxr-2.0.0-chexpert.csv", mimic_labels, 0, &err);
    assert_non_null(t);
    assert_int_equal(labels_get_format(t), LABELS_MIMIC);
    assert_string_equal(labels_format_name(LABELS_MIMIC), "MIMIC-CXR");
    assert_null(labels_joined(t));
    assert_int_equal(labels_rows(t), 3);
    assert_true(has_warning(t, "line 5: the study_id is not a number"));
    check_mimic_study_rows(t, "anywhere");
    labels_free(t);

    /* both, gzip-compressed as MIMIC-CXR-JPG ships them: joined per image */
    for (size_t i = 0; i < sizeof mimic_files / sizeof *mimic_files; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "mimic/%s", mimic_files[i]);
        touch(rel);
    }
    free(write_gz("mimic/mimic-cxr-2.0.0-metadata.csv.gz", mimic_metadata));
    char *path = write_gz("mimic/mimic-cxr-2.0.0-chexpert.csv.gz", mimic_labels);
    assert_int_equal(labels_load(path, &t, &err), 0);
    free(path);
    assert_int_equal(labels_get_format(t), LABELS_MIMIC);
    assert_true(labels_gzipped(t));
    assert_string_equal(labels_joined(t), "mimic-cxr-2.0.0-metadata.csv.gz");
    assert_int_equal(labels_rows(t), 3 + 4);
    assert_true(has_warning(t, "mimic-cxr-2.0.0-metadata.csv.gz: line 6: the study_id is not a number"));
    check_mimic_study_rows(t, "mimic");
    const store_meta *m = find_in(t, "mimic", mimic_files[0]);
    assert_string_equal(m->view, "PA");
    assert_string_equal(m->study_date, "2180-05-06");
    assert_int_equal(m->n_kv, 0); /* the metadata's other columns are left out */
    m = find_in(t, "mimic", mimic_files[1]);
    assert_string_equal(m->view, "LATERAL");
    assert_string_equal(m->labels[0], "No Finding");
    m = find_in(t, "mimic", mimic_files[2]);
    assert_string_equal(m->view, "AP");
    assert_string_equal(m->study_date, "2180-06-26");
    assert_string_equal(kv(m, "uncertain_findings"), "Edema");
    m = find_in(t, "mimic", mimic_files[4]); /* a study without labels: its view and date */
    assert_non_null(m);
    assert_int_equal(m->n_labels, 0);
    assert_string_equal(m->view, "PA");
    assert_string_equal(m->patient_id, "10009999");
    labels_free(t);

    /* the metadata alone: views and dates by the file name */
    path = write_gz("mimic-metadata-only.csv.gz", mimic_metadata);
    assert_int_equal(labels_load(path, &t, &err), 0);
    free(path);
    assert_int_equal(labels_get_format(t), LABELS_MIMIC_METADATA);
    m = labels_find(t, "/elsewhere/174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962.jpg");
    assert_non_null(m);
    assert_string_equal(m->view, "LATERAL");
    assert_int_equal(m->n_labels, 0);
    labels_free(t);

    /* a file named as the metadata beside the labels, but of another format */
    touch("mimic_bad/files/x.jpg");
    free(write_file("mimic_bad/mimic-cxr-2.0.0-metadata.csv", "image,labels\na.png,A\n", 21));
    path = write_file("mimic_bad/mimic-cxr-2.0.0-chexpert.csv", mimic_labels, strlen(mimic_labels));
    assert_int_equal(labels_load(path, &t, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "beside MIMIC-CXR's labels but not its metadata"));
    free(path);
}

/* Any labels file may be gzip-compressed; a bad one is refused clearly. */
static void test_gzip_labels(void **state)
{
    (void)state;
    ms_err err = {0};
    labels *t = NULL;
    char *path = write_gz("gz_labels.csv", "image,labels\na.png,Mass|Nodule\n");
    assert_int_equal(labels_load(path, &t, &err), 0);
    free(path);
    assert_true(labels_gzipped(t));
    assert_int_equal(labels_find(t, "/x/a.png")->n_labels, 2);
    labels_free(t);
    /* cut short, damaged, two members, and a trailer claiming 4 GiB - 1 */
    struct libdeflate_compressor *c = libdeflate_alloc_compressor(6);
    const char *text = "image,labels\na.png,Mass\n";
    uint8_t gz[256];
    size_t n = libdeflate_gzip_compress(c, text, strlen(text), gz, sizeof gz);
    libdeflate_free_compressor(c);
    assert_true(n > 20 && 2 * n < sizeof gz);
    uint8_t bad[256];
    struct {
        size_t len;
        int at, value, rc;
        const char *says;
    } cases[] = {
        {17, -1, 0, MS_EFORMAT, "truncated"},
        {0, -4, 0, MS_EFORMAT, "not a readable gzip file"},  /* its stream cut, its trailer kept */
        {0, 12, 0x55, MS_EFORMAT, "not a readable gzip file"}, /* a damaged byte */
        {0, -2, 0, MS_EFORMAT, "several members"},
        {0, -3, 0, MS_ETOOBIG, "over the 1024 MiB limit"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t len = cases[i].len ? cases[i].len : n;
        memcpy(bad, gz, n);
        if (cases[i].at == -4) {
            memcpy(bad + n / 2, gz + n - 8, 8);
            len = n / 2 + 8;
        }
        if (cases[i].at >= 0)
            bad[cases[i].at] ^= (uint8_t)cases[i].value;
        if (cases[i].at == -2) {
            memcpy(bad + n, gz, n);
            len = 2 * n;
        }
        if (cases[i].at == -3)
            memset(bad + n - 4, 0xff, 4);
        path = write_file("gz_bad.csv.gz", (const char *)bad, len);
        assert_int_equal(labels_load(path, &t, &err), cases[i].rc);
        if (!strstr(err.msg, cases[i].says))
            fail_msg("case %zu: \"%s\" does not say %s", i, err.msg, cases[i].says);
        free(path);
    }
}

/* Nearest rank: the ceil(p n)-th smallest, so p50 <= p99 for every n (bench
 * serve's old pair gave p99 < p50 for two requests). */
static void test_percentile(void **state)
{
    (void)state;
    double two[2] = {540.8, 56.1};
    assert_true(cli_percentile(two, 2, 0.50) == 56.1);
    assert_true(cli_percentile(two, 2, 0.99) == 540.8);
    double hundred[100];
    for (int i = 0; i < 100; i++)
        hundred[i] = 100 - i; /* 100..1 */
    assert_true(cli_percentile(hundred, 100, 0.50) == 50);
    assert_true(cli_percentile(hundred, 100, 0.99) == 99);
    assert_true(cli_percentile(hundred, 100, 1.0) == 100);
    assert_true(cli_percentile(hundred, 0, 0.5) == 0);
    double one = 7;
    assert_true(cli_percentile(&one, 1, 0.01) == 7 && cli_percentile(&one, 1, 0.99) == 7);
    unsigned seed = 1;
    for (size_t n = 1; n <= 64; n++) {
        double v[64];
        for (size_t i = 0; i < n; i++)
            v[i] = rand_r(&seed) % 1000;
        double p50 = cli_percentile(v, n, 0.50), p99 = cli_percentile(v, n, 0.99);
        if (!(p50 <= p99) || p99 > v[n - 1] || p50 < v[0])
            fail_msg("n %zu: p50 %g p99 %g", n, p50, p99);
    }
}

static void test_chexpert_format(void **state)
{
    (void)state;
    static const char *const files[] = {
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
        "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg",
        "CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg",
        "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg",
    };
    for (size_t i = 0; i < sizeof files / sizeof *files; i++)
        touch(files[i]);
    ms_err err = {0};
    labels *t = load("CheXpert-v1.0-small/train.csv",
                     "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                     "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
                     "Pleural Effusion,Pleural Other,Fracture,Support Devices\n"
                     "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,"
                     "1.0,,,,,,,,,0.0,,,,1.0\n"
                     "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Male,87,Frontal,PA,"
                     ",,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,\n"
                     "CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Male,83,Lateral,,"
                     ",,,1.0,,,,,,,,,,\n"
                     "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Female,40,Frontal,AP,"
                     ",,2.0,,,,,,,,,,,\n",
                     0, &err);
    assert_non_null(t);
    assert_int_equal(labels_get_format(t), LABELS_CHEXPERT);
    assert_string_equal(labels_format_name(LABELS_CHEXPERT), "CheXpert");
    assert_int_equal(labels_rows(t), 3);
    assert_true(has_warning(t, "line 5: an observation is not 1.0, 0.0, -1.0 or empty"));

    const store_meta *m = find_rel(t, files[0]);
    assert_non_null(m);
    assert_int_equal(m->n_labels, 2);
    assert_string_equal(m->labels[0], "No Finding");
    assert_string_equal(m->labels[1], "Support Devices");
    assert_string_equal(m->patient_id, "patient00001");
    assert_int_equal(m->sex, 'F');
    assert_int_equal(m->age, 68);
    assert_string_equal(m->view, "AP");
    assert_null(kv(m, "uncertain_findings"));

    m = find_rel(t, files[1]);
    assert_non_null(m);
    assert_int_equal(m->n_labels, 2);
    assert_string_equal(m->labels[0], "Lung Opacity");
    assert_string_equal(m->labels[1], "Fracture");
    assert_string_equal(kv(m, "uncertain_findings"), "Cardiomegaly|Edema|Consolidation|Atelectasis|Pleural Effusion");
    assert_string_equal(m->patient_id, "patient00002");
    assert_int_equal(m->sex, 'M');

    m = find_rel(t, files[2]);
    assert_non_null(m);
    assert_string_equal(m->view, "LATERAL");
    assert_string_equal(m->labels[0], "Lung Opacity");

    assert_null(find_rel(t, files[3]));                       /* its row was bad */
    assert_null(labels_find(t, "/elsewhere/view1_frontal.jpg")); /* a base name of several rows */
    labels_free(t);

    /* a CheXpert-like header without any observation is not CheXpert */
    assert_null(load("CheXpert-v1.0-small/odd.csv", "Path,Sex,Age\nx.jpg,Male,3\n", MS_EFORMAT, &err));
    assert_non_null(strstr(err.msg, "CheXpert"));
}

/* A labels file made on Windows names images with backslashes: relative
 * paths match by path, absolute ones by base name. */
static void test_windows_paths(void **state)
{
    (void)state;
    ms_err err = {0};
    touch("win/scans/a.png");
    touch("win/scans/b.png");
    labels *t = load("win/labels.csv",
                     "image,labels\r\n"
                     "scans\\a.png,Mass\r\n"
                     ".\\scans\\b.png,Effusion\r\n"
                     "C:\\Users\\me\\x-rays\\c.png,Nodule\r\n",
                     0, &err);
    assert_non_null(t);
    for (int i = 0; i < 2; i++) {
        const store_meta *m = find_rel(t, i ? "win/scans/b.png" : "win/scans/a.png");
        assert_non_null(m);
        assert_string_equal(m->labels[0], i ? "Effusion" : "Mass");
    }
    const store_meta *m = labels_find(t, "/anywhere/c.png");
    assert_non_null(m);
    assert_string_equal(m->labels[0], "Nodule");
    labels_free(t);
}

/* Excel's "CSV" on Windows is Windows-1252; its "Unicode Text" is UTF-16
 * with a byte-order mark and tabs. Both are read as what they are. */
static labels *load_bytes(const char *name, const unsigned char *bytes, size_t len, ms_err *err)
{
    char *path = write_file(name, (const char *)bytes, len);
    labels *t = NULL;
    int rc = labels_load(path, &t, err);
    free(path);
    assert_int_equal(rc, 0);
    return t;
}

/* ASCII text as UTF-16 (after a byte-order mark), with '~' standing for
 * the extra code units given. */
static size_t utf16(const char *ascii, int le, const unsigned *extra, unsigned char *out)
{
    size_t o = 0;
    out[o++] = le ? 0xFF : 0xFE;
    out[o++] = le ? 0xFE : 0xFF;
    for (const char *p = ascii; *p; p++) {
        unsigned u = *p == '~' ? *extra++ : (unsigned char)*p;
        out[o++] = (unsigned char)(le ? u & 0xFF : u >> 8);
        out[o++] = (unsigned char)(le ? u >> 8 : u & 0xFF);
    }
    return o;
}

static void test_encodings(void **state)
{
    (void)state;
    ms_err err = {0};
    /* Windows-1252: "Épanchement" (0xC9), "Müller" (0xFC), a euro sign
     * (0x80), a curly quote (0x92) and an undefined byte (0x81) */
    const char cp1252[] = "image;labels;patient_id;note\r\n"
                          "a.png;\xc9panchement;M\xfcller;5 \x80 l\x92x\x81\r\n";
    labels *t = load_bytes("cp1252.csv", (const unsigned char *)cp1252, sizeof cp1252 - 1, &err);
    assert_string_equal(labels_encoding(t), "Windows-1252");
    assert_int_equal(labels_separator(t), ';');
    const store_meta *m = labels_find(t, "a.png");
    assert_non_null(m);
    assert_string_equal(m->labels[0], "\xc3\x89panchement");
    assert_string_equal(m->patient_id, "M\xc3\xbcller");
    assert_string_equal(kv(m, "note"), "5 \xe2\x82\xac l\xe2\x80\x99x\xef\xbf\xbd");
    labels_free(t);

    /* UTF-16LE and BE: "Épanchement" (U+00C9), an emoji as a surrogate
     * pair (U+1FA7B), a lone high surrogate (U+FFFD) */
    const unsigned extra[] = {0x00C9, 0xD83E, 0xDE7B, 0xD800};
    for (int le = 1; le >= 0; le--) {
        unsigned char buf[512];
        size_t n = utf16("image\tlabels\tsite\r\nb.png\t~panchement\t~~ ~\r\n", le, extra, buf);
        t = load_bytes(le ? "utf16le.txt" : "utf16be.txt", buf, n, &err);
        assert_string_equal(labels_encoding(t), le ? "UTF-16LE" : "UTF-16BE");
        assert_int_equal(labels_separator(t), '\t');
        m = labels_find(t, "b.png");
        assert_non_null(m);
        assert_string_equal(m->labels[0], "\xc3\x89panchement");
        assert_string_equal(kv(m, "site"), "\xf0\x9f\xa9\xbb \xef\xbf\xbd");
        labels_free(t);
    }

    /* UTF-8 with one damaged row stays UTF-8: the other rows keep their
     * characters, the damaged one is skipped */
    const char mixed[] = "image,labels\nc.png,\xc3\x89panchement\nd.png,\xc9panchement\n";
    t = load_bytes("mixed.csv", (const unsigned char *)mixed, sizeof mixed - 1, &err);
    assert_string_equal(labels_encoding(t), "UTF-8");
    assert_string_equal(labels_find(t, "c.png")->labels[0], "\xc3\x89panchement");
    assert_null(labels_find(t, "d.png"));
    assert_true(has_warning(t, "line 3: a field is not UTF-8 text"));
    labels_free(t);
}

static void test_bad_headers(void **state)
{
    (void)state;
    ms_err err = {0};
    assert_null(load("a.csv", "image,patient_id\nx.png,1\n", MS_EFORMAT, &err));
    assert_non_null(strstr(err.msg, "missing required column 'labels'"));
    assert_null(load("b.csv", "Image Index,Patient ID\nx.png,1\n", MS_EFORMAT, &err));
    assert_non_null(strstr(err.msg, "missing required column 'Finding Labels'"));
    assert_null(load("c.csv", "file,diagnosis\nx.png,1\n", MS_EFORMAT, &err));
    assert_non_null(strstr(err.msg, "neither"));
    assert_null(load("d.csv", "", MS_EFORMAT, &err));
    assert_null(load("e.csv", "image,labels,labels\nx,y,z\n", MS_EFORMAT, &err));
    assert_non_null(strstr(err.msg, "twice"));
    /* a column name the store cannot take as a key (not UTF-8, over
     * STORE_MAX_TEXT bytes) is dropped with a warning, not handed on to
     * make every image's ingest fail (found by tests/fuzz/fuzz_cli_labels.c) */
    char *long_name = malloc(STORE_MAX_TEXT + 64);
    memset(long_name, 'k', STORE_MAX_TEXT + 1);
    long_name[STORE_MAX_TEXT + 1] = '\0';
    char text[STORE_MAX_TEXT + 256];
    /* (the row's UTF-8 "\xc3\x85" keeps the file UTF-8, not Windows-1252) */
    snprintf(text, sizeof text, "\nimage,labels,site,\xff\xfe,%s\nx.png,Mass,\xc3\x85,B,C\n", long_name);
    free(long_name);
    labels *t = load("f.csv", text, 0, &err);
    assert_non_null(t);
    assert_true(has_warning(t, "line 2: column 4's name is not UTF-8 text"));
    assert_true(has_warning(t, "line 2: column 5's name is not UTF-8 text"));
    const store_meta *m = labels_find(t, "x.png");
    assert_non_null(m);
    assert_int_equal(m->n_kv, 1);
    assert_string_equal(m->kv[0].key, "site");
    labels_free(t);
    t = NULL;
    assert_int_equal(labels_load("/nonexistent/labels.csv", &t, &err), MS_ENOTFOUND);
    assert_non_null(strstr(err.msg, "/nonexistent/labels.csv"));
    /* binary junk: an error or rows skipped, never a crash */
    char junk[2048];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)((i * 131) ^ (i >> 3));
    memcpy(junk, "image,labels\n", 13);
    char *path = write_file("junk.csv", junk, sizeof junk);
    if (labels_load(path, &t, &err) == 0)
        labels_free(t);
    free(path);
}

/* ---- option parsing ---- */

static int k, flag;
static const char *str;
static const cli_option opts[] = {
    {"k", 'k', CLI_INT, &k, "N", "results", 1, 100},
    {"flag", 0, CLI_FLAG, &flag, NULL, "a flag", 0, 0},
    {"str", 0, CLI_STRING, &str, "S", "a string", 0, 0},
    {0},
};
static const cli_command cmd = {"test", "FILE", "A test command.", CLI_DB | CLI_MODEL | CLI_JSON, opts, 1, 1};

static int parse(int argc, char **argv, cli_common *c, char ***args, int *n, int *code)
{
    k = 10;
    flag = 0;
    str = NULL;
    return cli_parse(&cmd, argc, argv, c, args, n, code);
}

static void test_parse(void **state)
{
    (void)state;
    cli_common c;
    char **args;
    int n, code;
    unsetenv("MEDSEARCH_DB");
    char *a1[] = {"test", "-k", "5", "img.png", "--flag", "--db=x.db", "--pool", "gem", "--gem-p", "4", "--json",
                  "--input-size", "256", "--str", "--", NULL};
    assert_int_equal(parse(15, a1, &c, &args, &n, &code), 1);
    assert_int_equal(n, 1);
    assert_string_equal(args[0], "img.png");
    assert_int_equal(k, 5);
    assert_int_equal(flag, 1);
    assert_string_equal(str, "--"); /* a value may look like an option */
    assert_string_equal(c.db, "x.db");
    assert_true(c.db_given);
    assert_int_equal(c.model_opt.pool, MODEL_POOL_GEM);
    assert_float_equal(c.model_opt.gem_p, 4.0, 1e-6);
    assert_int_equal(c.model_opt.input_size, 256);
    assert_true(c.json);
    free(args);
    /* what is asked for is not taken from the collection, each group on its own */
    engine_options eo;
    cli_engine_options(&c, &eo);
    assert_false(eo.pooling_from_collection);
    assert_false(eo.prep_from_collection);
    char *a_pool[] = {"test", "f", "--pool", "gem", NULL}, *a_size[] = {"test", "f", "--input-size", "288", NULL};
    assert_int_equal(parse(4, a_pool, &c, &args, &n, &code), 1);
    free(args);
    cli_engine_options(&c, &eo);
    assert_false(eo.pooling_from_collection);
    assert_true(eo.prep_from_collection);
    assert_int_equal(parse(4, a_size, &c, &args, &n, &code), 1);
    free(args);
    cli_engine_options(&c, &eo);
    assert_true(eo.pooling_from_collection);
    assert_false(eo.prep_from_collection);
    assert_int_equal(eo.model.input_size, 288);

    char *a2[] = {"test", "--", "-odd-name.png", NULL};
    assert_int_equal(parse(3, a2, &c, &args, &n, &code), 1);
    assert_string_equal(args[0], "-odd-name.png");
    assert_string_equal(c.db, "medsearch.db");
    assert_false(c.db_given);
    free(args);

    setenv("MEDSEARCH_DB", "env.db", 1);
    char *a3[] = {"test", "f", NULL};
    assert_int_equal(parse(2, a3, &c, &args, &n, &code), 1);
    assert_string_equal(c.db, "env.db");
    free(args);
    unsetenv("MEDSEARCH_DB");
}

static void test_parse_mistakes(void **state)
{
    (void)state;
    cli_common c;
    char **args;
    int n, code;
    char *bad[][4] = {
        {"test", "f", "-k", "0"},     {"test", "f", "-k", "x"},         {"test", "f", "--nope", NULL},
        {"test", "f", "-k", NULL},    {"test", "f", "--pool", "mean"}, {"test", "f", "--gem-p", "0.5"},
        {"test", "f", "--flag=1", NULL}, {"test", NULL, NULL, NULL},   {"test", "f", "g", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int argc = 0;
        while (argc < 4 && bad[i][argc])
            argc++;
        code = -1;
        assert_int_equal(parse(argc, bad[i], &c, &args, &n, &code), 0);
        assert_int_equal(code, EXIT_USAGE);
    }
    char *help[] = {"test", "--help", NULL};
    assert_int_equal(parse(2, help, &c, &args, &n, &code), 0);
    assert_int_equal(code, 0);
}

static void test_exit_codes(void **state)
{
    (void)state;
    assert_int_equal(cli_exit_code(MS_OK), 0);
    assert_int_equal(cli_exit_code(MS_EINVAL), EXIT_USAGE);
    assert_int_equal(cli_exit_code(MS_EDB), EXIT_ENV);
    assert_int_equal(cli_exit_code(MS_EIO), EXIT_ENV);
    assert_int_equal(cli_exit_code(MS_EFORMAT), 1);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    static char buf[256];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Nothing but the names given is left in the folder (no temporary file). */
static void assert_only(const char *dir, int n, const char *const *names)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int seen = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        int known = 0;
        for (int i = 0; i < n; i++)
            known |= !strcmp(e->d_name, names[i]);
        if (!known)
            fail_msg("unexpected file %s in %s", e->d_name, dir);
        seen++;
    }
    closedir(d);
    assert_int_equal(seen, n);
}

static void write_out(const char *path, const char *text, int ok)
{
    cli_out_file o;
    assert_int_equal(cli_out_open(&o, path), 0);
    assert_non_null(o.f);
    fputs(text, o.f);
    assert_int_equal(cli_out_close(&o, ok), ok ? 0 : -1);
}

static void test_out_file(void **state)
{
    (void)state;
    char dir[300], path[400], link[400];
    snprintf(dir, sizeof dir, "%s/out", tmp);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(path, sizeof path, "%s/report.md", dir);
    mode_t mask = umask(022);

    /* a new file: all of it or nothing, with the umask's mode */
    write_out(path, "abandoned", 0);
    assert_only(dir, 0, NULL);
    write_out(path, "first", 1);
    assert_string_equal(read_text(path), "first");
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    const char *only_report[] = {"report.md"};
    assert_only(dir, 1, only_report);

    /* replacing: an abandoned write leaves the old file; a finished one keeps its mode */
    assert_int_equal(chmod(path, 0640), 0);
    write_out(path, "never seen", 0);
    assert_string_equal(read_text(path), "first");
    write_out(path, "second", 1);
    assert_string_equal(read_text(path), "second");
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    assert_only(dir, 1, only_report);

    /* through a symbolic link: the target is replaced, the link stays */
    snprintf(link, sizeof link, "%s/link.md", dir);
    assert_int_equal(symlink("report.md", link), 0);
    write_out(link, "third", 1);
    assert_string_equal(read_text(path), "third");
    assert_int_equal(lstat(link, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    const char *both[] = {"report.md", "link.md"};
    assert_only(dir, 2, both);

    /* a folder, or a path in a missing folder, fails at open with errno */
    cli_out_file o;
    assert_int_equal(cli_out_open(&o, dir), -1);
    assert_int_equal(errno, EISDIR);
    snprintf(path, sizeof path, "%s/missing/report.md", dir);
    assert_int_equal(cli_out_open(&o, path), -1);
    assert_int_equal(errno, ENOENT);
    assert_null(o.f);
    assert_int_equal(cli_out_close(&o, 1), 0); /* a closed o is a no-op */

    /* a device is written directly */
    write_out("/dev/null", "gone", 1);
    assert_int_equal(stat("/dev/null", &st), 0);
    assert_true(S_ISCHR(st.st_mode));
    umask(mask);
}

int main(void)
{
    snprintf(tmp, sizeof tmp, "%s/medsearch-cli-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmp))
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nih_format),     cmocka_unit_test(test_generic_format),
        cmocka_unit_test(test_bad_headers),    cmocka_unit_test(test_parse),
        cmocka_unit_test(test_parse_mistakes), cmocka_unit_test(test_exit_codes),
        cmocka_unit_test(test_out_file),       cmocka_unit_test(test_separators),
        cmocka_unit_test(test_encodings),      cmocka_unit_test(test_windows_paths),
        cmocka_unit_test(test_chexpert_format), cmocka_unit_test(test_nih_patient_sex),
        cmocka_unit_test(test_mimic_format),   cmocka_unit_test(test_gzip_labels),
        cmocka_unit_test(test_percentile),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd_rm[300];
    snprintf(cmd_rm, sizeof cmd_rm, "rm -rf '%s'", tmp);
    if (system(cmd_rm) != 0)
        return 1;
    return rc;
}
