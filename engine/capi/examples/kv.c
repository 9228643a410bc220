/*
 * kv.c: the smallest key-value backend on smr, as an example of the C API.
 *
 * The state is a tiny in-memory map. A command is the text "key=value" (a put); its result is
 * the previous value ("" when none). Reads are served from the map itself, after
 * smr_read_barrier has made it current.
 *
 * Usage: kv CONFIG.toml
 *   Founds a one-node cluster from CONFIG.toml (or restarts it from its data), puts a few keys
 *   synchronously and asynchronously, retries one put to show it is applied once, reads after a
 *   barrier, prints the status, stops. Run it twice on the same config: the second run restores
 *   the state from the snapshot and the log, and says so.
 *
 * Build: cc -Iengine/capi/include kv.c target/release/libsmr.a -lpthread -ldl -lm
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "smr.h"

#define KEYS_MAX 64
#define TEXT_MAX 64

/* The replicated state. Only the apply thread writes it; readers take the lock. */
typedef struct {
    pthread_mutex_t lock;
    size_t count;
    char keys[KEYS_MAX][TEXT_MAX];
    char values[KEYS_MAX][TEXT_MAX];
    unsigned long applied; /* commands applied, retries excluded */
    unsigned long restored;
    /* From the notifications. */
    uint64_t led_in_term, leader_id, first_voter;
    size_t voter_count, learner_count;
} kv_state;

static int find(const kv_state *kv, const char *key) {
    for (size_t i = 0; i < kv->count; i++) {
        if (strcmp(kv->keys[i], key) == 0) return (int)i;
    }
    return -1;
}

/* Copies [data, data+len) into a NUL-terminated text of at most TEXT_MAX - 1 bytes. */
static int copy_text(char *out, const uint8_t *data, size_t len) {
    if (len >= TEXT_MAX) return -1;
    memcpy(out, data, len);
    out[len] = '\0';
    return 0;
}

static void kv_apply(void *user_data, uint64_t index, const smr_command *commands, size_t count,
                     smr_result_sink *sink) {
    kv_state *kv = user_data;
    (void)index;
    pthread_mutex_lock(&kv->lock);
    for (size_t i = 0; i < count; i++) {
        const uint8_t *eq = commands[i].len ? memchr(commands[i].data, '=', commands[i].len) : NULL;
        char key[TEXT_MAX], value[TEXT_MAX];
        if (eq == NULL || copy_text(key, commands[i].data, (size_t)(eq - commands[i].data)) != 0 ||
            copy_text(value, eq + 1, commands[i].len - (size_t)(eq - commands[i].data) - 1) != 0) {
            /* Malformed for this state machine: an error result, and no change. */
            smr_result_set(sink, i, (const uint8_t *)"ERR malformed", 13);
            continue;
        }
        int at = find(kv, key);
        if (at < 0 && kv->count == KEYS_MAX) {
            smr_result_set(sink, i, (const uint8_t *)"ERR full", 8);
            continue;
        }
        if (at < 0) {
            at = (int)kv->count++;
            strcpy(kv->keys[at], key);
            kv->values[at][0] = '\0';
        }
        smr_result_set(sink, i, (const uint8_t *)kv->values[at], strlen(kv->values[at]));
        strcpy(kv->values[at], value);
        kv->applied++;
    }
    pthread_mutex_unlock(&kv->lock);
}

/* Snapshot format: the map as it is in memory (count, then the two arrays). */
static int kv_snapshot(void *user_data, smr_writer *writer) {
    kv_state *kv = user_data;
    pthread_mutex_lock(&kv->lock);
    uint64_t count = kv->count;
    int failed = smr_writer_write(writer, (const uint8_t *)&count, sizeof count) != SMR_OK ||
                 smr_writer_write(writer, (const uint8_t *)kv->keys, sizeof kv->keys) != SMR_OK ||
                 smr_writer_write(writer, (const uint8_t *)kv->values, sizeof kv->values) != SMR_OK;
    pthread_mutex_unlock(&kv->lock);
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

static int kv_restore(void *user_data, smr_reader *reader) {
    kv_state *kv = user_data;
    uint64_t count = 0;
    if (read_exactly(reader, &count, sizeof count) != 0 || count > KEYS_MAX) return 1;
    pthread_mutex_lock(&kv->lock);
    int failed = read_exactly(reader, kv->keys, sizeof kv->keys) != 0 ||
                 read_exactly(reader, kv->values, sizeof kv->values) != 0;
    kv->count = failed ? 0 : (size_t)count;
    kv->restored++;
    pthread_mutex_unlock(&kv->lock);
    return failed;
}

static void kv_on_fatal(void *user_data, int32_t exit_code, const char *message) {
    (void)user_data;
    fprintf(stderr, "kv: the node stopped (exit code %d): %s\n", exit_code, message);
}

/* Notifications run on the node's core thread: record them and return at once. */
static void kv_on_role_change(void *user_data, int32_t role, uint64_t term, uint64_t leader_id) {
    kv_state *kv = user_data;
    pthread_mutex_lock(&kv->lock);
    if (role == 3) kv->led_in_term = term;
    kv->leader_id = leader_id;
    pthread_mutex_unlock(&kv->lock);
}

static void kv_on_membership_change(void *user_data, const uint64_t *voters, size_t voter_count,
                                    const uint64_t *learners, size_t learner_count) {
    kv_state *kv = user_data;
    (void)learners;
    pthread_mutex_lock(&kv->lock);
    kv->voter_count = voter_count;
    kv->first_voter = voter_count > 0 ? voters[0] : 0;
    kv->learner_count = learner_count;
    pthread_mutex_unlock(&kv->lock);
}

/* Asynchronous proposals: the completions count down. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t done;
    int pending;
    int failed;
} waiter;

static void on_complete(void *context, smr_status status, const uint8_t *result, size_t len) {
    waiter *w = context;
    (void)result;
    (void)len;
    pthread_mutex_lock(&w->lock);
    if (status != SMR_OK) {
        fprintf(stderr, "kv: async put: %s: %s\n", smr_strerror(status), smr_last_error_message());
        w->failed++;
    }
    w->pending--;
    pthread_cond_signal(&w->done);
    pthread_mutex_unlock(&w->lock);
}

#define CHECK(call)                                                                           \
    do {                                                                                      \
        smr_status status_ = (call);                                                          \
        if (status_ != SMR_OK) {                                                              \
            fprintf(stderr, "kv: %s: %s: %s\n", #call, smr_strerror(status_), smr_last_error_message()); \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: kv CONFIG.toml\n");
        return 2;
    }
    static kv_state kv; /* zeroed */
    pthread_mutex_init(&kv.lock, NULL);
    smr_callbacks callbacks = {.apply = kv_apply,
                               .snapshot = kv_snapshot,
                               .restore = kv_restore,
                               .on_fatal = kv_on_fatal,
                               .on_role_change = kv_on_role_change,
                               .on_membership_change = kv_on_membership_change};
    smr_node *node = NULL;
    CHECK(smr_node_start_file(argv[1], SMR_START_NEW, &callbacks, &kv, &node));
    if (kv.restored) printf("restored from a snapshot\n");

    /* A session per run of this process (the node remembers sessions across restarts, so a
     * second run reusing session 1 from sequence 1 would be answered as a retry). */
    uint64_t session = (uint64_t)getpid(), sequence = 1;

    /* A one-node cluster elects itself within a few election timeouts. */
    smr_buffer previous = {0};
    const char *first = "greeting=hello";
    smr_status status;
    for (int attempt = 0;; attempt++) {
        status = smr_propose_sync(node, session, sequence, (const uint8_t *)first, strlen(first), 5000, &previous);
        if (status != SMR_E_NOT_LEADER || attempt == 500) break;
        sleep_ms(20);
    }
    CHECK(status);
    printf("put greeting: previous \"%.*s\"\n", (int)previous.len, previous.data ? (char *)previous.data : "");
    pthread_mutex_lock(&kv.lock);
    printf("notified: leader in term %llu, voters %zu (first %llu), learners %zu\n",
           (unsigned long long)kv.led_in_term, kv.voter_count, (unsigned long long)kv.first_voter,
           kv.learner_count);
    pthread_mutex_unlock(&kv.lock);
    smr_buffer_free(&previous);
    sequence++;

    /* Retrying the same (session, sequence) is answered with the first result, applied once. */
    pthread_mutex_lock(&kv.lock);
    unsigned long applied_before = kv.applied;
    pthread_mutex_unlock(&kv.lock);
    CHECK(smr_propose_sync(node, session, sequence - 1, (const uint8_t *)first, strlen(first), 5000, NULL));
    pthread_mutex_lock(&kv.lock);
    printf("retry applied %lu times\n", kv.applied - applied_before);
    pthread_mutex_unlock(&kv.lock);

    /* Asynchronous puts: proposed without waiting, completions count them. */
    waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
    for (int i = 0; i < 10; i++) {
        char command[TEXT_MAX];
        int len = snprintf(command, sizeof command, "key%d=value%d", i, i);
        pthread_mutex_lock(&w.lock);
        w.pending++;
        pthread_mutex_unlock(&w.lock);
        status = smr_propose(node, session, sequence++, (const uint8_t *)command, (size_t)len, on_complete, &w);
        if (status != SMR_OK) { /* no completion will come */
            pthread_mutex_lock(&w.lock);
            w.pending--;
            w.failed++;
            pthread_mutex_unlock(&w.lock);
        }
    }
    pthread_mutex_lock(&w.lock);
    while (w.pending > 0) pthread_cond_wait(&w.done, &w.lock);
    pthread_mutex_unlock(&w.lock);
    printf("async puts failed: %d\n", w.failed);

    /* A linearizable read: barrier, then read our own state. */
    CHECK(smr_read_barrier(node, 5000));
    pthread_mutex_lock(&kv.lock);
    int at = find(&kv, "key7");
    printf("read key7 = %s\n", at < 0 ? "(none)" : kv.values[at]);
    printf("keys: %zu\n", kv.count);
    pthread_mutex_unlock(&kv.lock);

    char *json = NULL;
    CHECK(smr_status_json(node, 5000, &json));
    printf("status has state_hash: %s\n", strstr(json, "state_hash") ? "yes" : "no");
    smr_free_string(json);
    CHECK(smr_metrics_json(node, &json));
    printf("metrics is an object: %s\n", json[0] == '{' ? "yes" : "no");
    smr_free_string(json);

    CHECK(smr_node_stop(node));
    CHECK(smr_node_free(node));
    pthread_mutex_destroy(&kv.lock);
    printf("stopped cleanly\n");
    return 0;
}
