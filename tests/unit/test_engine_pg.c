/*
 * test_engine_pg.c - the engine's suite (test_engine_suite.h) on a real,
 * throwaway PostgreSQL server started with tests/tools/pg_start.sh, one
 * fresh database per test. Skips (77) when PostgreSQL or the shared data
 * are absent.
 */
#include <libpq-fe.h>

#include "test_engine_suite.h"

static char base_uri[512];   /* postgresql://medsearch@127.0.0.1:PORT/medsearch */
static int db_counter;

static char *suite_new_db(void)
{
    PGconn *c = PQconnectdb(base_uri);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "cannot connect to %s: %s\n", base_uri, PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    char sql[128], *uri = NULL;
    snprintf(sql, sizeof sql, "CREATE DATABASE engine_%d", db_counter);
    PGresult *r = PQexec(c, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "%s: %s\n", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    const char *slash = strrchr(base_uri, '/');
    if (ok && asprintf(&uri, "%.*s/engine_%d", (int)(slash - base_uri), base_uri, db_counter) < 0)
        uri = NULL;
    db_counter++;
    return uri;
}

int main(void)
{
    snprintf(G.tmp, sizeof G.tmp, "%s/medsearch-engine-pg-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(G.tmp)) {
        perror("mkdtemp");
        return 1;
    }
    chmod(G.tmp, 0711); /* as root the cluster belongs to another user, who must reach it */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "tests/tools/pg_start.sh '%s/pg'", G.tmp);
    FILE *p = popen(cmd, "r");
    int got = p && fgets(base_uri, sizeof base_uri, p) != NULL;
    int status = p ? pclose(p) : -1;
    int rc;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
        printf("skip: PostgreSQL is not installed here (tests/tools/pg_start.sh)\n");
        rc = 77;
    } else if (!got || status != 0) {
        printf("could not start PostgreSQL (tests/tools/pg_start.sh exit status %d)\n", status);
        rc = 1;
    } else {
        base_uri[strcspn(base_uri, "\r\n")] = '\0';
        rc = run_engine_suite("engine (PostgreSQL)");
        snprintf(cmd, sizeof cmd, "tests/tools/pg_stop.sh '%s/pg'", G.tmp);
        if (system(cmd) != 0)
            fprintf(stderr, "pg_stop.sh failed\n");
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", G.tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", G.tmp);
    return rc;
}
