/*
 * labels.h - reads the metadata CSV given to `medsearch ingest --labels`.
 *
 * Five formats, told apart by the header:
 *   - NIH ChestX-ray14's Data_Entry_2017.csv: "Image Index" (a file's base
 *     name), "Finding Labels" (A|B, "No Finding" is a label), "Follow-up #",
 *     "Patient ID", "Patient Age" (a number, or "058Y" in some versions),
 *     "Patient Gender" (or "Patient Sex", as its 2020 edition names it),
 *     "View Position"; other columns become key/values.
 *   - the generic labels.csv of MedSearch's data folders: "image" (a path
 *     relative to the CSV's folder), "labels" (pipe-separated), then any of
 *     "patient_id", "age", "sex", "view", "study_date"; every other column
 *     becomes a key/value.
 *   - CheXpert's train.csv / valid.csv: "Path" (from the folder above the
 *     CSV's: CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg),
 *     "Sex", "Age", "Frontal/Lateral", "AP/PA", and its fourteen
 *     observations, each 1.0 (a label), -1.0 (uncertain: kept as the
 *     key/value uncertain_findings, A|B), 0.0 or empty; the patient comes
 *     from the path's patientNNNNN folder, a lateral image's view is
 *     LATERAL. Told by a "Path" column beside at least one observation.
 *   - MIMIC-CXR's mimic-cxr-2.0.0-chexpert.csv (or -negbio.csv): "subject_id"
 *     (the patient), "study_id" and the same fourteen observations, read as
 *     CheXpert's. A row is a study: it matches every file under the folder
 *     s<study_id> (files/p10/p10000032/s50414267/<dicom_id>.jpg). When
 *     mimic-cxr-*-metadata.csv (or .csv.gz) lies beside it, that file is
 *     joined in: each of its images gets its study's labels, and the view
 *     ("ViewPosition") and date ("StudyDate", 20170131 written 2017-01-31)
 *     of its own row, found by its file name without the extension.
 *   - that metadata file alone: "dicom_id", "subject_id", "study_id",
 *     "ViewPosition", "StudyDate"; its other columns (the image's size and
 *     time, DICOM code meanings that repeat the view) are left out.
 * Any of these may be gzip-compressed (told by its first bytes; MIMIC-CXR
 * ships .csv.gz): it is inflated first, to at most LABELS_MAX_BYTES.
 * Column names are matched without regard to case or surrounding spaces.
 * The file is RFC 4180 CSV (quotes, doubled quotes, CRLF, a UTF-8 BOM),
 * with its field separator taken from the header: ',' unless ';' (what a
 * spreadsheet writes where the comma is the decimal mark; an age "58,5" is
 * then read as 58) or a tab comes more often in it. Its text is UTF-8;
 * UTF-16 with a byte-order mark (a spreadsheet's "Unicode Text"); or, when
 * it is not UTF-8 and holds no multibyte UTF-8 character at all,
 * Windows-1252 (a spreadsheet's "CSV" on Windows). It is converted to
 * UTF-8 before parsing.
 *
 * A missing required column, or a header of neither format, is an error
 * (MS_EFORMAT naming what is missing). A bad row (wrong number of fields, no
 * image, an age that is not a number, text that is not UTF-8) is skipped and
 * listed in the warnings with its line number; an implausible age (over
 * 150) is kept as unknown, with a warning.
 *
 * An image file is matched to its row by its path relative to the CSV's
 * folder, then by the longest tail of its path that is a row's path (a row
 * may start from a folder above the CSV's, as CheXpert's do), then by its
 * base name (when that base name is in one row only).
 * A backslash in a row's image path is a folder separator (a file made on
 * Windows), so "images\a.png" and "C:\set\a.png" match too.
 */
#ifndef MS_LABELS_H
#define MS_LABELS_H

#include <stddef.h>

#include "store/store.h"
#include "util/err.h"

typedef struct labels labels;

typedef enum { LABELS_GENERIC = 0, LABELS_NIH, LABELS_CHEXPERT, LABELS_MIMIC, LABELS_MIMIC_METADATA } labels_format;

/* Largest CSV accepted (the full NIH file is about 8 MB). */
#define LABELS_MAX_BYTES ((size_t)1 << 30)

/* Returns 0, or MS_ENOTFOUND / MS_EIO (cannot read), MS_ETOOBIG, MS_EFORMAT
 * (header), MS_ENOMEM. *out is the caller's: labels_free(). */
int labels_load(const char *path, labels **out, ms_err *err);
void labels_free(labels *t);

labels_format labels_get_format(const labels *t);
char labels_separator(const labels *t);       /* ',', ';' or '\t' */
const char *labels_encoding(const labels *t);  /* "UTF-8", "Windows-1252", "UTF-16LE", "UTF-16BE" */
const char *labels_format_name(labels_format f);
int labels_gzipped(const labels *t);          /* 1 when the file was gzip-compressed */
/* MIMIC-CXR: the base name of the metadata file joined in, or NULL. */
const char *labels_joined(const labels *t);
size_t labels_rows(const labels *t);          /* rows kept */

/* Problems found in rows, "line 12: ...", in file order. */
size_t labels_n_warnings(const labels *t);
const char *labels_warning(const labels *t, size_t i);

/* The metadata of an image file, or NULL when no row matches. Owned by the
 * table (original_name is NULL: the caller sets its own copy). */
const store_meta *labels_find(const labels *t, const char *file_path);

#endif
