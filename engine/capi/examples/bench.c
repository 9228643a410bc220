/*
 * bench.c: the C half of the benchmark of the C API's boundary.
 *
 * Starts a 3-node cluster in this process through libsmr (loopback, free ports, data under
 * DIR), waits for a leader, and keeps OUTSTANDING asynchronous puts in flight on it with
 * smr_propose: each completion records its latency and proposes the next put from inside the
 * callback. A put is a 16-byte key and a 128-byte value; the state machine is a bounded hash
 * map whose result is the key's previous value (empty for a new key). Keys are uniform over
 * KEYS. benches/boundary.rs runs the same workload through the Rust API (smr-runtime's Node)
 * with the same state machine, alternates the two, and prints the table:
 *
 *   cargo bench -p smr-capi --bench boundary
 *
 * Usage: bench DIR OUTSTANDING --seconds S --warmup W   (a timed run)
 *        bench DIR OUTSTANDING --ops N                   (exactly N puts, for the smoke test)
 *
 * Prints one line of JSON: ops/s, p50/p99 latency (proposal to completion, in µs) and CPU time
 * per put (user + system of this process) of the measured phase, errors, results that were not a previous value of the same key, the number of
 * commands each replica applied and whether the replicas' state hashes agree. Exits 0 when the
 * run was clean (no errors, every result right, replicas equal), 1 otherwise.
 *
 * Build: cc -O2 -Iengine/capi/include bench.c target/release/libsmr.a -lpthread -ldl -lm
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "smr.h"

#define NODES 3
#define KEY_BYTES 16
#define VALUE_BYTES 128
#define COMMAND_BYTES (KEY_BYTES + VALUE_BYTES)
/* The key space, and the map's fixed size: a power of two with room to spare. */
#define KEYS 10000
#define TABLE_SLOTS 16384
#define TABLE_ENTRIES_MAX 12288
#define OUTSTANDING_MAX 1024
/* Latency samples kept per run (4 bytes each); later completions are counted, not sampled. */
#define SAMPLES_MAX (1u << 22)
#define SESSION 1
#define TIMEOUT_MS 5000
#define CONFIG_BYTES_MAX 4096
/* An election timeout of 1 s (100 ticks of 10 ms) rather than 100 ms: on a loaded machine a
 * late heartbeat must not move the leader in the middle of a run. */
#define ELECTION_TICKS 100

/* ---- The state machine: the same as KvTable in benches/boundary.rs. ---- */

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t load_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void store_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t fnv1a64(uint64_t hash, const uint8_t *data, size_t len) {
    for (size_t i = 0; i < len; i++) hash = (hash ^ data[i]) * 0x100000001b3ULL;
    return hash;
}

typedef struct {
    uint8_t used;
    uint8_t key[KEY_BYTES];
    uint8_t value[VALUE_BYTES];
} entry;

typedef struct {
    pthread_mutex_t lock; /* apply writes; the main thread reads at the end */
    entry *slots;         /* TABLE_SLOTS */
    size_t count;
    uint64_t applied;
} kv_table;

/* The slot of `key`, or the empty slot where it goes; NULL when the map is full. */
static entry *kv_find(kv_table *kv, const uint8_t *key) {
    size_t at = (size_t)(mix64(load_le64(key)) & (TABLE_SLOTS - 1));
    for (size_t probes = 0; probes < TABLE_SLOTS; probes++) {
        entry *e = &kv->slots[at];
        if (!e->used || memcmp(e->key, key, KEY_BYTES) == 0) return e;
        at = (at + 1) & (TABLE_SLOTS - 1);
    }
    return NULL;
}

static void kv_apply(void *user_data, uint64_t index, const smr_command *commands, size_t count,
                     smr_result_sink *sink) {
    kv_table *kv = user_data;
    (void)index;
    pthread_mutex_lock(&kv->lock);
    for (size_t i = 0; i < count; i++) {
        if (commands[i].len != COMMAND_BYTES) {
            smr_result_set(sink, i, (const uint8_t *)"ERR malformed", 13);
            continue;
        }
        entry *e = kv_find(kv, commands[i].data);
        if (e == NULL || (!e->used && kv->count == TABLE_ENTRIES_MAX)) {
            smr_result_set(sink, i, (const uint8_t *)"ERR full", 8);
            continue;
        }
        if (e->used) {
            smr_result_set(sink, i, e->value, VALUE_BYTES);
        } else {
            smr_result_set(sink, i, NULL, 0);
            e->used = 1;
            memcpy(e->key, commands[i].data, KEY_BYTES);
            kv->count++;
        }
        memcpy(e->value, commands[i].data + KEY_BYTES, VALUE_BYTES);
        kv->applied++;
    }
    pthread_mutex_unlock(&kv->lock);
}

/* Snapshot: the entry count and the number applied (u64 LE each), then key ‖ value per entry. */
static int kv_snapshot(void *user_data, smr_writer *writer) {
    kv_table *kv = user_data;
    pthread_mutex_lock(&kv->lock);
    uint8_t header[16];
    store_le64(header, kv->count);
    store_le64(header + 8, kv->applied);
    int failed = smr_writer_write(writer, header, sizeof header) != SMR_OK;
    for (size_t i = 0; i < TABLE_SLOTS && !failed; i++) {
        const entry *e = &kv->slots[i];
        if (!e->used) continue;
        failed = smr_writer_write(writer, e->key, KEY_BYTES) != SMR_OK ||
                 smr_writer_write(writer, e->value, VALUE_BYTES) != SMR_OK;
    }
    pthread_mutex_unlock(&kv->lock);
    return failed;
}

static int read_exactly(smr_reader *reader, uint8_t *buffer, size_t len) {
    size_t done = 0;
    while (done < len) {
        size_t got = 0;
        if (smr_reader_read(reader, buffer + done, len - done, &got) != SMR_OK || got == 0) return -1;
        done += got;
    }
    return 0;
}

static int kv_restore(void *user_data, smr_reader *reader) {
    kv_table *kv = user_data;
    uint8_t header[16];
    if (read_exactly(reader, header, sizeof header) != 0) return 1;
    uint64_t count = load_le64(header);
    if (count > TABLE_ENTRIES_MAX) return 1;
    pthread_mutex_lock(&kv->lock);
    memset(kv->slots, 0, TABLE_SLOTS * sizeof(entry));
    kv->count = 0;
    kv->applied = load_le64(header + 8);
    int failed = 0;
    for (uint64_t i = 0; i < count && !failed; i++) {
        uint8_t record[COMMAND_BYTES];
        entry *e;
        failed = read_exactly(reader, record, sizeof record) != 0 || (e = kv_find(kv, record)) == NULL || e->used;
        if (failed) break;
        e->used = 1;
        memcpy(e->key, record, KEY_BYTES);
        memcpy(e->value, record + KEY_BYTES, VALUE_BYTES);
        kv->count++;
    }
    pthread_mutex_unlock(&kv->lock);
    return failed;
}

/* The sum of FNV-1a over key ‖ value of every entry: independent of the slot order. */
static uint64_t kv_hash_locked(const kv_table *kv) {
    uint64_t sum = 0;
    for (size_t i = 0; i < TABLE_SLOTS; i++) {
        const entry *e = &kv->slots[i];
        if (!e->used) continue;
        sum += fnv1a64(fnv1a64(0xcbf29ce484222325ULL, e->key, KEY_BYTES), e->value, VALUE_BYTES);
    }
    return sum;
}

static uint64_t kv_state_hash(void *user_data) {
    kv_table *kv = user_data;
    pthread_mutex_lock(&kv->lock);
    uint64_t hash = kv_hash_locked(kv);
    pthread_mutex_unlock(&kv->lock);
    return hash;
}

static void kv_on_fatal(void *user_data, int32_t exit_code, const char *message) {
    (void)user_data;
    fprintf(stderr, "bench: a node stopped (exit code %d): %s\n", exit_code, message);
}

/* ---- The driver. ---- */

enum { PHASE_WARMUP, PHASE_MEASURE, PHASE_STOP };

typedef struct driver driver;

typedef struct {
    driver *d;
    uint64_t id;
    struct timespec start;
    atomic_int busy; /* a proposal of this slot is in flight */
} request_slot;

struct driver {
    smr_node *leader;
    uint64_t ops_limit; /* 0: run until the phase is PHASE_STOP */
    atomic_int phase;
    atomic_uint_fast64_t next_id, completed, measured, errors, bad_results, sample_count;
    atomic_int active;
    atomic_flag error_printed;
    uint32_t *samples;
    int outstanding;
    request_slot slots[OUTSTANDING_MAX];
};

/* User and system CPU time of this process (all three nodes and the driver), in seconds. */
static double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6 + (double)usage.ru_stime.tv_sec +
           (double)usage.ru_stime.tv_usec / 1e6;
}

static double seconds_between(const struct timespec *a, const struct timespec *b) {
    return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

/* The put of write `id`: key k = mix64(id) % KEYS as le64(k) ‖ le64(mix64(~k)); the value holds
 * the key, then le64(id), then filler. */
static void make_command(uint64_t id, uint8_t *command) {
    uint64_t k = mix64(id) % KEYS;
    store_le64(command, k);
    store_le64(command + 8, mix64(~k));
    memcpy(command + KEY_BYTES, command, KEY_BYTES);
    store_le64(command + KEY_BYTES + KEY_BYTES, id);
    for (size_t j = KEY_BYTES + KEY_BYTES + 8; j < COMMAND_BYTES; j++) command[j] = (uint8_t)(id + j);
}

/* A previous value is right when it is empty or a value written for the same key by another
 * write already issued. */
static int result_is_right(const driver *d, uint64_t id, const uint8_t *command, const uint8_t *result,
                           size_t len) {
    if (len == 0) return 1;
    if (len != VALUE_BYTES || memcmp(result, command, KEY_BYTES) != 0) return 0;
    uint64_t previous = load_le64(result + KEY_BYTES);
    return previous != id && previous >= 1 && previous < atomic_load(&d->next_id);
}

static void slot_idle(request_slot *slot) {
    atomic_store(&slot->busy, 0);
    atomic_fetch_sub(&slot->d->active, 1);
}

static void on_done(void *context, smr_status status, const uint8_t *result, size_t len);

/* Proposes the next put of `slot` (marked busy by the caller). */
static void issue(request_slot *slot) {
    driver *d = slot->d;
    uint64_t id = atomic_load(&d->phase) == PHASE_STOP ? 0 : atomic_fetch_add(&d->next_id, 1);
    if (id == 0 || (d->ops_limit != 0 && id > d->ops_limit)) {
        slot_idle(slot);
        return;
    }
    uint8_t command[COMMAND_BYTES];
    make_command(id, command);
    slot->id = id;
    clock_gettime(CLOCK_MONOTONIC, &slot->start);
    smr_status status = smr_propose(d->leader, SESSION, id, command, COMMAND_BYTES, on_done, slot);
    if (status != SMR_OK) {
        atomic_fetch_add(&d->errors, 1);
        if (!atomic_flag_test_and_set(&d->error_printed))
            fprintf(stderr, "bench: propose: %s: %s\n", smr_strerror(status), smr_last_error_message());
        slot_idle(slot); /* the main loop proposes again */
    }
}

static void on_done(void *context, smr_status status, const uint8_t *result, size_t len) {
    request_slot *slot = context;
    driver *d = slot->d;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (status != SMR_OK) {
        atomic_fetch_add(&d->errors, 1);
        if (!atomic_flag_test_and_set(&d->error_printed))
            fprintf(stderr, "bench: put %llu: %s: %s\n", (unsigned long long)slot->id, smr_strerror(status),
                    smr_last_error_message());
        slot_idle(slot); /* not from here: a refusal would loop; the main loop proposes again */
        return;
    }
    uint8_t command[COMMAND_BYTES];
    make_command(slot->id, command);
    if (!result_is_right(d, slot->id, command, result, len)) atomic_fetch_add(&d->bad_results, 1);
    atomic_fetch_add(&d->completed, 1);
    if (atomic_load(&d->phase) == PHASE_MEASURE) {
        atomic_fetch_add(&d->measured, 1);
        uint64_t at = atomic_fetch_add(&d->sample_count, 1);
        double us = seconds_between(&slot->start, &now) * 1e6;
        if (at < SAMPLES_MAX) d->samples[at] = us > 4e9 ? 4000000000u : (uint32_t)us;
    }
    issue(slot);
}

/* Proposes on every idle slot. */
static void launch_idle(driver *d) {
    for (int i = 0; i < d->outstanding; i++) {
        request_slot *slot = &d->slots[i];
        if (atomic_exchange(&slot->busy, 1) == 0) {
            atomic_fetch_add(&d->active, 1);
            issue(slot);
        }
    }
}

static int compare_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static unsigned free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof address;
    if (fd < 0 || bind(fd, (struct sockaddr *)&address, sizeof address) != 0 ||
        getsockname(fd, (struct sockaddr *)&address, &len) != 0) {
        perror("bench: free port");
        exit(1);
    }
    close(fd);
    return ntohs(address.sin_port);
}

static void usage(void) {
    fprintf(stderr, "usage: bench DIR OUTSTANDING (--seconds S --warmup W | --ops N)\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 7) usage();
    const char *dir = argv[1];
    int outstanding = atoi(argv[2]);
    double seconds = 0, warmup = 0;
    uint64_t ops = 0;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--seconds") == 0) seconds = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--warmup") == 0) warmup = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--ops") == 0) ops = strtoull(argv[i + 1], NULL, 10);
        else usage();
    }
    if (outstanding < 1 || outstanding > OUTSTANDING_MAX || (ops == 0) == (seconds <= 0) || warmup < 0) usage();

    /* Three founding members on free loopback ports. */
    unsigned ports[NODES][2];
    for (int i = 0; i < NODES; i++) ports[i][0] = free_port(), ports[i][1] = free_port();
    char members[1024] = "";
    for (int i = 0; i < NODES; i++) {
        size_t used = strlen(members);
        snprintf(members + used, sizeof members - used,
                 "[[members]]\nid = %d\npeer_address = \"127.0.0.1:%u\"\nclient_address = \"127.0.0.1:%u\"\n",
                 i + 1, ports[i][0], ports[i][1]);
    }
    static kv_table tables[NODES];
    smr_node *nodes[NODES] = {0};
    smr_callbacks callbacks = {.apply = kv_apply,
                               .snapshot = kv_snapshot,
                               .restore = kv_restore,
                               .state_hash = kv_state_hash,
                               .on_fatal = kv_on_fatal};
    for (int i = 0; i < NODES; i++) {
        pthread_mutex_init(&tables[i].lock, NULL);
        tables[i].slots = calloc(TABLE_SLOTS, sizeof(entry));
        if (tables[i].slots == NULL) return perror("bench: calloc"), 1;
        char config[CONFIG_BYTES_MAX];
        int len = snprintf(config, sizeof config,
                           "node_id = %d\ncluster_id = \"0xbe\"\ndata_dir = \"%s/node%d\"\n"
                           "secret = \"boundary-benchmark-secret-32-chars\"\n"
                           "peer_listen = \"127.0.0.1:%u\"\nclient_listen = \"127.0.0.1:%u\"\n%s"
                           "[raft]\nelection_ticks = %d\n",
                           i + 1, dir, i + 1, ports[i][0], ports[i][1], members, ELECTION_TICKS);
        if (len < 0 || len >= (int)sizeof config) return fprintf(stderr, "bench: config too long\n"), 1;
        smr_status status = smr_node_start(config, (size_t)len, SMR_START_NEW, &callbacks, &tables[i], &nodes[i]);
        if (status != SMR_OK) {
            fprintf(stderr, "bench: start node %d: %s: %s\n", i + 1, smr_strerror(status), smr_last_error_message());
            return 1;
        }
    }

    static driver d; /* zeroed; large */
    d.outstanding = outstanding;
    d.ops_limit = ops;
    atomic_store(&d.next_id, 1);
    d.samples = malloc(SAMPLES_MAX * sizeof(uint32_t));
    if (d.samples == NULL) return perror("bench: malloc"), 1;
    for (int i = 0; i < outstanding; i++) d.slots[i].d = &d;

    /* Write 1 finds the leader: whoever accepts it. */
    uint8_t command[COMMAND_BYTES];
    uint64_t first = atomic_fetch_add(&d.next_id, 1);
    make_command(first, command);
    struct timespec began, now;
    clock_gettime(CLOCK_MONOTONIC, &began);
    for (int i = 0;; i = (i + 1) % NODES) {
        smr_status status = smr_propose_sync(nodes[i], SESSION, first, command, COMMAND_BYTES, TIMEOUT_MS, NULL);
        if (status == SMR_OK) {
            d.leader = nodes[i];
            break;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((status != SMR_E_NOT_LEADER && status != SMR_E_TIMED_OUT) || seconds_between(&began, &now) > 30) {
            fprintf(stderr, "bench: no leader: %s: %s\n", smr_strerror(status), smr_last_error_message());
            return 1;
        }
        if (i == NODES - 1) sleep_ms(10);
    }
    atomic_fetch_add(&d.completed, 1);

    /* The run: the main thread only watches the clock and re-proposes after a failure. */
    atomic_store(&d.phase, ops != 0 || warmup == 0 ? PHASE_MEASURE : PHASE_WARMUP);
    struct timespec measure_start, measure_end;
    clock_gettime(CLOCK_MONOTONIC, &began);
    measure_start = began;
    double cpu_start = cpu_seconds();
    launch_idle(&d);
    for (;;) {
        sleep_ms(ops != 0 ? 1 : 5);
        clock_gettime(CLOCK_MONOTONIC, &now);
        double elapsed = seconds_between(&began, &now);
        if (ops != 0) {
            if (atomic_load(&d.next_id) > ops && atomic_load(&d.active) == 0) break;
        } else if (atomic_load(&d.phase) == PHASE_WARMUP && elapsed >= warmup) {
            measure_start = now;
            cpu_start = cpu_seconds();
            atomic_store(&d.phase, PHASE_MEASURE);
        } else if (atomic_load(&d.phase) == PHASE_MEASURE && elapsed >= warmup + seconds) {
            break;
        }
        if (elapsed > warmup + seconds + 60) {
            fprintf(stderr, "bench: the run did not finish\n");
            return 1;
        }
        launch_idle(&d);
    }
    clock_gettime(CLOCK_MONOTONIC, &measure_end);
    double cpu_used = cpu_seconds() - cpu_start;
    atomic_store(&d.phase, PHASE_STOP);
    for (int waited = 0; atomic_load(&d.active) > 0; waited++) {
        if (waited == 30000) return fprintf(stderr, "bench: puts still in flight after 30 s\n"), 1;
        sleep_ms(1);
    }

    /* Every replica applies every put; then their states must be equal. */
    smr_status barrier = smr_read_barrier(d.leader, TIMEOUT_MS);
    uint64_t applied[NODES], hashes[NODES];
    int equal = 0;
    for (int waited = 0; waited < 1000 && !equal; waited++) {
        equal = barrier == SMR_OK;
        for (int i = 0; i < NODES; i++) {
            pthread_mutex_lock(&tables[i].lock);
            applied[i] = tables[i].applied;
            hashes[i] = kv_hash_locked(&tables[i]);
            pthread_mutex_unlock(&tables[i].lock);
            equal = equal && applied[i] == applied[0] && hashes[i] == hashes[0];
        }
        if (!equal) sleep_ms(10);
    }

    uint64_t samples = atomic_load(&d.sample_count);
    if (samples > SAMPLES_MAX) samples = SAMPLES_MAX;
    qsort(d.samples, samples, sizeof(uint32_t), compare_u32);
    uint32_t p50 = samples ? d.samples[(samples - 1) * 50 / 100] : 0;
    uint32_t p99 = samples ? d.samples[(samples - 1) * 99 / 100] : 0;
    double measured_seconds = seconds_between(&measure_start, &measure_end);
    uint64_t measured = atomic_load(&d.measured), errors = atomic_load(&d.errors);
    uint64_t bad = atomic_load(&d.bad_results), completed = atomic_load(&d.completed);
    printf("{\"side\":\"c\",\"outstanding\":%d,\"seconds\":%.3f,\"ops\":%llu,\"ops_per_sec\":%.1f,"
           "\"p50_us\":%u,\"p99_us\":%u,\"cpu_us_per_op\":%.2f,\"completed\":%llu,\"errors\":%llu,\"bad_results\":%llu,"
           "\"applied\":[%llu,%llu,%llu],\"replicas_equal\":%s}\n",
           outstanding, measured_seconds, (unsigned long long)measured, (double)measured / measured_seconds, p50,
           p99, measured ? cpu_used * 1e6 / (double)measured : 0.0, (unsigned long long)completed, (unsigned long long)errors, (unsigned long long)bad,
           (unsigned long long)applied[0], (unsigned long long)applied[1], (unsigned long long)applied[2],
           equal ? "true" : "false");
    fflush(stdout);

    int failed = 0;
    for (int i = 0; i < NODES; i++) {
        smr_status status = smr_node_stop(nodes[i]);
        if (status != SMR_OK) {
            fprintf(stderr, "bench: stop node %d: %s: %s\n", i + 1, smr_strerror(status), smr_last_error_message());
            failed = 1;
        }
        smr_node_free(nodes[i]);
        free(tables[i].slots);
        pthread_mutex_destroy(&tables[i].lock);
    }
    free(d.samples);
    return failed || errors != 0 || bad != 0 || !equal || applied[0] != completed ? 1 : 0;
}
