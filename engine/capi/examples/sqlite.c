/*
 * sqlite.c: a replicated SQLite database on smr, as an example of the C API.
 *
 * Every node keeps its own in-memory SQLite database. A command is one UTF-8 SQL text (one or
 * more statements), applied by `apply` on every replica inside a savepoint: its result is "ok",
 * or "error: <SQLite's message>" with the command's changes rolled back, the same on every
 * replica since SQLite is deterministic for the same statements on the same database (commands
 * must not use random(), the clock or other nondeterministic functions). `snapshot` writes the
 * database with sqlite3_serialize, `restore` reads it back with sqlite3_deserialize. Reads run on
 * a node's own database after smr_read_barrier, under the mutex `apply` takes.
 *
 * Usage: sqlite NODE1.toml NODE2.toml NODE3.toml
 *   The three configs are the founding members 1, 2 and 3 of one cluster (fresh data
 *   directories). The demo starts the three nodes in this process, creates a table, inserts
 *   rows through whichever node leads, shows that a failing statement fails the same way
 *   everywhere, stops the leader ("kills" it), keeps inserting through the new leader, then
 *   restarts the killed node from its data (snapshot and log), lets it catch up, and prints
 *   for every node "node N: rows R checksum C", a checksum of a full ordered dump. It exits 0
 *   only if every node holds every acknowledged row and all checksums agree.
 *
 * Build: cc -Iengine/capi/include sqlite.c target/release/libsmr.a -lsqlite3 -lpthread -ldl -lm
 */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "smr.h"

#define NODES 3
#define ROWS_BEFORE 40 /* inserted before the leader is killed */
#define ROWS_AFTER 40  /* and after */
#define PROPOSE_TIMEOUT_MS 2000
#define DEADLINE_S 60

static const char SNAPSHOT_MAGIC[8] = {'S', 'Q', 'L', 'S', 'N', 'A', 'P', '1'};

/* One node's replicated state: its database, guarded by `lock` (apply vs. reads). */
typedef struct {
    pthread_mutex_t lock;
    sqlite3 *db;
    uint64_t last_index;   /* log index of the last batch applied (or restored) */
    int restored;          /* restore was called */
    int role;              /* from on_role_change */
    uint64_t leader_id;
    int in_command; /* apply is running a command's statements (see authorize) */
} backend;

/* While a command runs, its statements may not control transactions (the savepoint around it
 * is the command's own), attach files, or call the random functions: the authorizer refuses
 * them, with the same error on every replica. */
static int authorize(void *user_data, int action, const char *a, const char *b, const char *c, const char *d) {
    (void)b;
    (void)c;
    (void)d;
    if (!((backend *)user_data)->in_command) return SQLITE_OK;
    switch (action) {
    case SQLITE_TRANSACTION:
    case SQLITE_SAVEPOINT:
    case SQLITE_ATTACH:
    case SQLITE_DETACH:
        return SQLITE_DENY;
    case SQLITE_FUNCTION:
        return a && (strcmp(a, "random") == 0 || strcmp(a, "randomblob") == 0) ? SQLITE_DENY : SQLITE_OK;
    default:
        return SQLITE_OK;
    }
}

/* ---- checksums: FNV-1a over a full ordered dump ---- */

static void fnv(uint64_t *hash, const void *data, size_t len) {
    const unsigned char *bytes = data;
    for (size_t i = 0; i < len; i++) {
        *hash ^= bytes[i];
        *hash *= 1099511628211ULL;
    }
}

static void fnv_u64(uint64_t *hash, uint64_t value) {
    unsigned char bytes[8];
    for (int i = 0; i < 8; i++) bytes[i] = (unsigned char)(value >> (8 * i));
    fnv(hash, bytes, sizeof bytes);
}

/* Hashes every table's name and schema, then every row of it ordered by all its columns.
 * Stores the hash and the total row count; returns SQLITE_OK or SQLite's error code. */
static int dump_checksum(sqlite3 *db, uint64_t *hash_out, int64_t *rows_out) {
    uint64_t hash = 14695981039346656037ULL;
    int64_t rows = 0;
    sqlite3_stmt *tables = NULL;
    int rc = sqlite3_prepare_v2(db,
                                "SELECT name, sql FROM sqlite_master WHERE type = 'table' "
                                "AND name NOT LIKE 'sqlite_%' ORDER BY name",
                                -1, &tables, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(tables)) == SQLITE_ROW) {
        rc = SQLITE_OK;
        const char *name = (const char *)sqlite3_column_text(tables, 0);
        const char *sql = (const char *)sqlite3_column_text(tables, 1);
        fnv(&hash, name, strlen(name) + 1);
        fnv(&hash, sql ? sql : "", sql ? strlen(sql) + 1 : 1);
        /* The column count first, to order by every column: a total order without rowid. */
        char *query = sqlite3_mprintf("SELECT * FROM \"%w\"", name);
        sqlite3_stmt *probe = NULL;
        rc = query ? sqlite3_prepare_v2(db, query, -1, &probe, NULL) : SQLITE_NOMEM;
        int columns = probe ? sqlite3_column_count(probe) : 0;
        sqlite3_finalize(probe);
        sqlite3_free(query);
        if (rc != SQLITE_OK) break;
        query = sqlite3_mprintf("SELECT * FROM \"%w\" ORDER BY 1", name);
        for (int c = 2; query && c <= columns; c++) {
            char *longer = sqlite3_mprintf("%s, %d", query, c);
            sqlite3_free(query);
            query = longer;
        }
        sqlite3_stmt *select = NULL;
        rc = query ? sqlite3_prepare_v2(db, query, -1, &select, NULL) : SQLITE_NOMEM;
        sqlite3_free(query);
        while (rc == SQLITE_OK && (rc = sqlite3_step(select)) == SQLITE_ROW) {
            rc = SQLITE_OK;
            rows++;
            for (int c = 0; c < columns; c++) {
                int type = sqlite3_column_type(select, c);
                fnv_u64(&hash, (uint64_t)type);
                if (type == SQLITE_INTEGER) {
                    fnv_u64(&hash, (uint64_t)sqlite3_column_int64(select, c));
                } else if (type == SQLITE_FLOAT) {
                    double value = sqlite3_column_double(select, c);
                    uint64_t bits;
                    memcpy(&bits, &value, sizeof bits);
                    fnv_u64(&hash, bits);
                } else if (type == SQLITE_TEXT || type == SQLITE_BLOB) {
                    const void *data = type == SQLITE_TEXT ? (const void *)sqlite3_column_text(select, c)
                                                           : sqlite3_column_blob(select, c);
                    size_t len = (size_t)sqlite3_column_bytes(select, c);
                    fnv_u64(&hash, len);
                    if (len) fnv(&hash, data, len);
                }
            }
        }
        sqlite3_finalize(select);
        if (rc == SQLITE_DONE) rc = SQLITE_OK;
    }
    sqlite3_finalize(tables);
    if (rc == SQLITE_DONE) rc = SQLITE_OK;
    *hash_out = hash;
    *rows_out = rows;
    return rc;
}

/* ---- the callbacks ---- */

static void set_result(smr_result_sink *sink, size_t position, const char *text) {
    smr_result_set(sink, position, (const uint8_t *)text, strlen(text));
}

/* Applies one SQL command inside a savepoint: all of it or none of it. */
static void apply_one(backend *b, const smr_command *command, smr_result_sink *sink, size_t position) {
    sqlite3 *db = b->db;
    char *sql = malloc(command->len + 1);
    if (sql == NULL) {
        /* Not deterministic, and the state would diverge: stop rather than answer. */
        fprintf(stderr, "sqlite: out of memory in apply\n");
        abort();
    }
    if (command->len) memcpy(sql, command->data, command->len);
    sql[command->len] = '\0';
    if (strlen(sql) != command->len) {
        set_result(sink, position, "error: the command holds a NUL byte");
        free(sql);
        return;
    }
    sqlite3_exec(db, "SAVEPOINT command", NULL, NULL, NULL);
    char *message = NULL;
    b->in_command = 1;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &message);
    b->in_command = 0;
    free(sql);
    if (rc == SQLITE_OK) {
        sqlite3_exec(db, "RELEASE command", NULL, NULL, NULL);
        set_result(sink, position, "ok");
    } else {
        if (!sqlite3_get_autocommit(db)) {
            sqlite3_exec(db, "ROLLBACK TO command", NULL, NULL, NULL);
            sqlite3_exec(db, "RELEASE command", NULL, NULL, NULL);
        }
        char *text = sqlite3_mprintf("error: %s", message ? message : sqlite3_errstr(rc));
        set_result(sink, position, text ? text : "error");
        sqlite3_free(text);
    }
    sqlite3_free(message);
}

static void db_apply(void *user_data, uint64_t index, const smr_command *commands, size_t count,
                     smr_result_sink *sink) {
    backend *b = user_data;
    pthread_mutex_lock(&b->lock);
    for (size_t i = 0; i < count; i++) apply_one(b, &commands[i], sink, i);
    b->last_index = index;
    pthread_mutex_unlock(&b->lock);
}

static void put_u64(unsigned char *out, uint64_t value) {
    for (int i = 0; i < 8; i++) out[i] = (unsigned char)(value >> (8 * i));
}

static uint64_t get_u64(const unsigned char *in) {
    uint64_t value = 0;
    for (int i = 0; i < 8; i++) value |= (uint64_t)in[i] << (8 * i);
    return value;
}

/* Snapshot format: magic, last applied index (u64 LE), database size (u64 LE), the database
 * file's bytes as sqlite3_serialize gives them. */
static int db_snapshot(void *user_data, smr_writer *writer) {
    backend *b = user_data;
    pthread_mutex_lock(&b->lock);
    sqlite3_int64 size = 0;
    unsigned char *bytes = sqlite3_serialize(b->db, "main", &size, 0);
    unsigned char header[24];
    memcpy(header, SNAPSHOT_MAGIC, 8);
    put_u64(header + 8, b->last_index);
    put_u64(header + 16, bytes ? (uint64_t)size : 0);
    pthread_mutex_unlock(&b->lock);
    int failed = smr_writer_write(writer, header, sizeof header) != SMR_OK ||
                 (bytes && size > 0 && smr_writer_write(writer, bytes, (size_t)size) != SMR_OK);
    sqlite3_free(bytes);
    return failed;
}

static int read_exactly(smr_reader *reader, void *buffer, size_t len) {
    size_t done = 0;
    while (done < len) {
        size_t got = 0;
        if (smr_reader_read(reader, (uint8_t *)buffer + done, len - done, &got) != SMR_OK || got == 0) return -1;
        done += got;
    }
    return 0;
}

static int db_restore(void *user_data, smr_reader *reader) {
    backend *b = user_data;
    unsigned char header[24];
    if (read_exactly(reader, header, sizeof header) != 0 || memcmp(header, SNAPSHOT_MAGIC, 8) != 0) return 1;
    uint64_t last_index = get_u64(header + 8), size = get_u64(header + 16);
    if (size > (uint64_t)1 << 40) return 1;
    /* sqlite3_malloc'd, since the database takes ownership of it (FREEONCLOSE). */
    unsigned char *bytes = size ? sqlite3_malloc64(size) : NULL;
    if (size && bytes == NULL) return 1;
    if (size && read_exactly(reader, bytes, (size_t)size) != 0) {
        sqlite3_free(bytes);
        return 1;
    }
    /* The header says how much to read: do not read on to the end (the reader may yield bytes
     * of the snapshot file that follow the state machine's part). */
    /* A fresh connection replaces the whole state. */
    sqlite3 *db = NULL;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK) {
        sqlite3_close(db);
        sqlite3_free(bytes);
        return 1;
    }
    sqlite3_set_authorizer(db, authorize, b);
    if (size && sqlite3_deserialize(db, "main", bytes, (sqlite3_int64)size, (sqlite3_int64)size,
                                    SQLITE_DESERIALIZE_FREEONCLOSE | SQLITE_DESERIALIZE_RESIZEABLE) != SQLITE_OK) {
        /* sqlite3_deserialize has freed the buffer. */
        sqlite3_close(db);
        return 1;
    }
    pthread_mutex_lock(&b->lock);
    sqlite3_close(b->db);
    b->db = db;
    b->last_index = last_index;
    b->restored = 1;
    pthread_mutex_unlock(&b->lock);
    return 0;
}

/* The same checksum the demo prints: smr_status_json shows it as state_hash. */
static uint64_t db_state_hash(void *user_data) {
    backend *b = user_data;
    uint64_t hash = 0;
    int64_t rows = 0;
    pthread_mutex_lock(&b->lock);
    dump_checksum(b->db, &hash, &rows);
    pthread_mutex_unlock(&b->lock);
    return hash;
}

static void db_on_fatal(void *user_data, int32_t exit_code, const char *message) {
    (void)user_data;
    fprintf(stderr, "sqlite: a node stopped (exit code %d): %s\n", exit_code, message);
}

static void db_on_role_change(void *user_data, int32_t role, uint64_t term, uint64_t leader_id) {
    backend *b = user_data;
    (void)term;
    pthread_mutex_lock(&b->lock);
    b->role = role;
    b->leader_id = leader_id;
    pthread_mutex_unlock(&b->lock);
}

static const smr_callbacks CALLBACKS = {.apply = db_apply,
                                        .snapshot = db_snapshot,
                                        .restore = db_restore,
                                        .state_hash = db_state_hash,
                                        .on_fatal = db_on_fatal,
                                        .on_role_change = db_on_role_change};

/* ---- the demo ---- */

static smr_node *nodes[NODES];
static backend *backends[NODES];
static const char *configs[NODES];
static time_t deadline;

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static backend *backend_new(void) {
    backend *b = calloc(1, sizeof *b);
    if (b == NULL) return NULL;
    pthread_mutex_init(&b->lock, NULL);
    if (sqlite3_open(":memory:", &b->db) != SQLITE_OK) {
        sqlite3_close(b->db);
        pthread_mutex_destroy(&b->lock);
        free(b);
        return NULL;
    }
    sqlite3_set_authorizer(b->db, authorize, b);
    return b;
}

static void backend_free(backend *b) {
    if (b == NULL) return;
    sqlite3_close(b->db);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

static int start_node(int i, int32_t mode) {
    backends[i] = backend_new();
    if (backends[i] == NULL) return -1;
    smr_status status = smr_node_start_file(configs[i], mode, &CALLBACKS, backends[i], &nodes[i]);
    if (status != SMR_OK) {
        fprintf(stderr, "sqlite: starting node %d: %s: %s\n", i + 1, smr_strerror(status), smr_last_error_message());
        backend_free(backends[i]);
        backends[i] = NULL;
        return -1;
    }
    return 0;
}

static void kill_node(int i) {
    smr_status status = smr_node_stop(nodes[i]);
    if (status != SMR_OK) fprintf(stderr, "sqlite: stopping node %d: %s\n", i + 1, smr_last_error_message());
    smr_node_free(nodes[i]);
    nodes[i] = NULL;
    backend_free(backends[i]);
    backends[i] = NULL;
}

/* The one proposing client: a session and increasing sequence numbers. */
static uint64_t session, sequence;
static int leader = 0; /* index of the node that last accepted a proposal */

/* Proposes `sql` through whichever node leads, retrying a refusal or a timeout with the same
 * (session, sequence) so that it is applied once. Stores the result text in `result` and
 * returns 0, or -1 when no leader took it before the deadline. */
static int execute(const char *sql, char *result, size_t result_size) {
    uint64_t seq = ++sequence;
    while (time(NULL) < deadline) {
        for (int k = 0; k < NODES; k++) {
            int i = (leader + k) % NODES;
            if (nodes[i] == NULL) continue;
            smr_buffer answer = {0};
            smr_status status = smr_propose_sync(nodes[i], session, seq, (const uint8_t *)sql, strlen(sql),
                                                 PROPOSE_TIMEOUT_MS, &answer);
            if (status == SMR_OK) {
                leader = i;
                snprintf(result, result_size, "%.*s", (int)answer.len, answer.data ? (char *)answer.data : "");
                smr_buffer_free(&answer);
                return 0;
            }
            if (status != SMR_E_NOT_LEADER && status != SMR_E_TIMED_OUT && status != SMR_E_BUSY &&
                status != SMR_E_SHUTTING_DOWN) {
                fprintf(stderr, "sqlite: propose on node %d: %s: %s\n", i + 1, smr_strerror(status),
                        smr_last_error_message());
                return -1;
            }
        }
        sleep_ms(20);
    }
    fprintf(stderr, "sqlite: no leader took \"%s\" in time\n", sql);
    return -1;
}

/* A linearizable read on the leader: a barrier, then its own database. Returns the leader's
 * applied index after the barrier (what the other nodes must reach), or 0 on failure. */
static uint64_t barrier_on_leader(void) {
    while (time(NULL) < deadline) {
        for (int k = 0; k < NODES; k++) {
            int i = (leader + k) % NODES;
            if (nodes[i] == NULL || smr_read_barrier(nodes[i], PROPOSE_TIMEOUT_MS) != SMR_OK) continue;
            leader = i;
            pthread_mutex_lock(&backends[i]->lock);
            uint64_t index = backends[i]->last_index;
            sqlite3_stmt *count = NULL;
            long long rows = -1;
            if (sqlite3_prepare_v2(backends[i]->db, "SELECT count(*) FROM ledger", -1, &count, NULL) == SQLITE_OK &&
                sqlite3_step(count) == SQLITE_ROW)
                rows = sqlite3_column_int64(count, 0);
            sqlite3_finalize(count);
            pthread_mutex_unlock(&backends[i]->lock);
            printf("read on the leader (node %d) after a barrier: %lld rows in ledger\n", i + 1, rows);
            return index;
        }
        sleep_ms(20);
    }
    return 0;
}

/* Waits until node i has applied up to `index`. */
static int wait_applied(int i, uint64_t index) {
    while (time(NULL) < deadline) {
        pthread_mutex_lock(&backends[i]->lock);
        uint64_t applied = backends[i]->last_index;
        pthread_mutex_unlock(&backends[i]->lock);
        if (applied >= index) return 0;
        sleep_ms(10);
    }
    fprintf(stderr, "sqlite: node %d did not reach index %" PRIu64 " in time\n", i + 1, index);
    return -1;
}

/* Prints node i's line; returns 0 when it holds exactly the acknowledged rows. */
static int report(int i, const int *acked, int acked_count, uint64_t *hash) {
    int64_t rows = 0;
    int missing = 0;
    pthread_mutex_lock(&backends[i]->lock);
    int rc = dump_checksum(backends[i]->db, hash, &rows);
    sqlite3_stmt *find = NULL;
    if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(backends[i]->db, "SELECT 1 FROM ledger WHERE id = ?", -1, &find, NULL);
    for (int k = 0; rc == SQLITE_OK && k < acked_count; k++) {
        sqlite3_bind_int(find, 1, acked[k]);
        if (sqlite3_step(find) != SQLITE_ROW) missing++;
        sqlite3_reset(find);
    }
    sqlite3_finalize(find);
    pthread_mutex_unlock(&backends[i]->lock);
    printf("node %d: rows %" PRId64 " checksum %016" PRIx64 "\n", i + 1, rows, *hash);
    if (rc != SQLITE_OK) fprintf(stderr, "sqlite: node %d: dump failed: %s\n", i + 1, sqlite3_errstr(rc));
    if (missing) fprintf(stderr, "sqlite: node %d lacks %d acknowledged rows\n", i + 1, missing);
    return rc == SQLITE_OK && missing == 0 && rows == acked_count ? 0 : -1;
}

int main(int argc, char **argv) {
    if (argc != NODES + 1) {
        fprintf(stderr, "usage: sqlite NODE1.toml NODE2.toml NODE3.toml\n");
        return 2;
    }
    /* A peer connection closed by a stopped node must not kill this process: smr's sockets
     * can raise SIGPIPE, which Rust programs ignore but a C program does not by default. */
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    deadline = time(NULL) + DEADLINE_S;
    session = (uint64_t)getpid();
    int failed = 0;
    for (int i = 0; i < NODES; i++) configs[i] = argv[i + 1];
    for (int i = 0; i < NODES && !failed; i++) failed = start_node(i, SMR_START_NEW) != 0;

    char result[256];
    int acked[ROWS_BEFORE + ROWS_AFTER], acked_count = 0;
    if (!failed && execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, phase TEXT NOT NULL, amount INTEGER)",
                           result, sizeof result) == 0) {
        printf("create table: %s (leader: node %d)\n", result, leader + 1);
    } else {
        failed = 1;
    }
    for (int id = 1; id <= ROWS_BEFORE && !failed; id++) {
        char sql[128];
        snprintf(sql, sizeof sql, "INSERT INTO ledger VALUES (%d, 'before', %d)", id, id * 10);
        failed = execute(sql, result, sizeof result) != 0 || strcmp(result, "ok") != 0;
        if (!failed) acked[acked_count++] = id;
    }
    if (!failed) printf("inserted %d rows through node %d\n", acked_count, leader + 1);

    /* A failing statement: the same error on every replica, and nothing changed. */
    if (!failed && execute("INSERT INTO ledger VALUES (1, 'duplicate', 0)", result, sizeof result) == 0) {
        printf("duplicate insert: %s\n", result);
        failed = strncmp(result, "error: ", 7) != 0;
    } else {
        failed = 1;
    }

    /* Transaction control belongs to apply's savepoint: refused, the same way everywhere. */
    if (!failed && execute("COMMIT", result, sizeof result) == 0) {
        printf("commit inside a command: %s\n", result);
        failed = strncmp(result, "error: ", 7) != 0;
    } else {
        failed = 1;
    }

    int killed = leader;
    if (!failed) {
        printf("killing the leader, node %d\n", killed + 1);
        kill_node(killed);
    }
    int first_after = acked_count;
    for (int id = ROWS_BEFORE + 1; id <= ROWS_BEFORE + ROWS_AFTER && !failed; id++) {
        char sql[128];
        snprintf(sql, sizeof sql, "INSERT INTO ledger (id, phase, amount) VALUES (%d, 'after', %d)", id, id * 10);
        failed = execute(sql, result, sizeof result) != 0 || strcmp(result, "ok") != 0;
        if (!failed) acked[acked_count++] = id;
    }
    if (!failed) printf("inserted %d more rows through the new leader, node %d\n", acked_count - first_after, leader + 1);

    /* Every survivor catches up with the leader's barrier; compare their dumps. */
    uint64_t index = failed ? 0 : barrier_on_leader();
    failed = failed || index == 0;
    uint64_t hashes[NODES] = {0};
    for (int i = 0; i < NODES && !failed; i++) {
        if (nodes[i] == NULL) continue;
        failed = wait_applied(i, index) != 0 || report(i, acked, acked_count, &hashes[i]) != 0;
    }
    int survivor = (killed + 1) % NODES;
    for (int i = 0; i < NODES && !failed; i++) {
        if (nodes[i] != NULL && hashes[i] != hashes[survivor]) {
            fprintf(stderr, "sqlite: node %d and node %d differ\n", i + 1, survivor + 1);
            failed = 1;
        }
    }
    if (!failed) printf("survivors agree\n");

    /* The killed node restarts from its own data (snapshot, then log) and catches up. */
    if (!failed) failed = start_node(killed, SMR_START_EXISTING) != 0;
    if (!failed) {
        printf("node %d restarted, restored from a snapshot: %s\n", killed + 1, backends[killed]->restored ? "yes" : "no");
        failed = wait_applied(killed, index) != 0 || report(killed, acked, acked_count, &hashes[killed]) != 0;
        if (!failed && hashes[killed] != hashes[survivor]) {
            fprintf(stderr, "sqlite: the restarted node %d differs\n", killed + 1);
            failed = 1;
        }
        if (!failed) printf("all nodes agree\n");
    }

    for (int i = 0; i < NODES; i++) {
        if (nodes[i] != NULL) kill_node(i);
    }
    sqlite3_shutdown();
    printf("%s\n", failed ? "FAILED" : "stopped cleanly");
    return failed ? 1 : 0;
}
