/*
 * errors.c: the error paths of the C API, checked from C.
 *
 * Usage: errors CONFIG.toml
 *   CONFIG.toml is a valid config for a one-node cluster without a [raft] table (this program
 *   appends one that is wrong). Every refusal must come back as the documented status code,
 *   never as a crash; run under AddressSanitizer, nothing may leak or be touched out of bounds.
 *   Prints "errors: N checks passed" and exits 0, or lists the failures and exits 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "smr.h"

static int checks, failures;

#define EXPECT(call, expected)                                                                        \
    do {                                                                                              \
        smr_status got_ = (call);                                                                     \
        checks++;                                                                                     \
        if (got_ != (expected)) {                                                                     \
            failures++;                                                                               \
            fprintf(stderr, "FAIL line %d: %s returned %d (%s: %s), expected %s\n", __LINE__, #call,  \
                    (int)got_, smr_strerror(got_), smr_last_error_message(), #expected);              \
        }                                                                                             \
    } while (0)

#define EXPECT_TRUE(condition)                                                                        \
    do {                                                                                              \
        checks++;                                                                                     \
        if (!(condition)) {                                                                           \
            failures++;                                                                               \
            fprintf(stderr, "FAIL line %d: %s (last error: %s)\n", __LINE__, #condition,              \
                    smr_last_error_message());                                                        \
        }                                                                                             \
    } while (0)

/* Statuses of the calls made from inside `apply`, checked by main. */
static smr_node *the_node;
static int apply_probed;
static smr_status in_apply_sync, in_apply_barrier, in_apply_stop, in_apply_free, in_apply_status,
    in_apply_async, in_apply_bad_position;

static void on_complete(void *context, smr_status status, const uint8_t *result, size_t len) {
    (void)context, (void)status, (void)result, (void)len;
}

static void test_apply(void *user_data, uint64_t index, const smr_command *commands, size_t count,
                       smr_result_sink *sink) {
    (void)user_data, (void)index, (void)commands;
    if (!apply_probed && the_node != NULL) {
        apply_probed = 1;
        char *json = NULL;
        in_apply_sync = smr_propose_sync(the_node, 9, 1, (const uint8_t *)"x", 1, 1000, NULL);
        in_apply_barrier = smr_read_barrier(the_node, 1000);
        in_apply_stop = smr_node_stop(the_node);
        in_apply_free = smr_node_free(the_node);
        in_apply_status = smr_status_json(the_node, 1000, &json);
        in_apply_async = smr_propose(the_node, 9, 2, (const uint8_t *)"y", 1, on_complete, NULL);
        in_apply_bad_position = smr_result_set(sink, count, (const uint8_t *)"r", 1);
    }
    for (size_t i = 0; i < count; i++) smr_result_set(sink, i, NULL, 0);
}

static int test_snapshot(void *user_data, smr_writer *writer) {
    (void)user_data;
    return smr_writer_write(writer, NULL, 0) != SMR_OK;
}

static int test_restore(void *user_data, smr_reader *reader) {
    (void)user_data, (void)reader;
    return 0;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    static char text[1 << 16];
    *len = fread(text, 1, sizeof text - 1, f);
    text[*len] = '\0';
    fclose(f);
    return text;
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: errors CONFIG.toml\n");
        return 2;
    }
    size_t config_len = 0;
    const char *config = read_file(argv[1], &config_len);
    if (config == NULL) {
        fprintf(stderr, "errors: cannot read %s\n", argv[1]);
        return 2;
    }
    smr_callbacks callbacks = {.apply = test_apply, .snapshot = test_snapshot, .restore = test_restore};
    smr_node *node = (smr_node *)&checks; /* must be overwritten with NULL on failure */

    /* Status texts. */
    EXPECT_TRUE(strcmp(smr_strerror(SMR_OK), "success") == 0);
    EXPECT_TRUE(strcmp(smr_strerror(12345), "unknown status code") == 0);
    for (int code = 0; code >= -16; code--) EXPECT_TRUE(strcmp(smr_strerror(code), "unknown status code") != 0);
    EXPECT_TRUE(strcmp(smr_last_error_message(), "") == 0);

    /* Starting: every pointer and length is checked. */
    EXPECT(smr_node_start(config, config_len, SMR_START_NEW, &callbacks, NULL, NULL), SMR_E_NULL);
    EXPECT(smr_node_start(NULL, config_len, SMR_START_NEW, &callbacks, NULL, &node), SMR_E_NULL);
    EXPECT_TRUE(node == NULL);
    EXPECT(smr_node_start(NULL, 0, SMR_START_NEW, &callbacks, NULL, &node), SMR_E_NULL);
    EXPECT(smr_node_start(config, config_len, SMR_START_NEW, NULL, NULL, &node), SMR_E_NULL);
    smr_callbacks no_apply = callbacks;
    no_apply.apply = NULL;
    EXPECT(smr_node_start(config, config_len, SMR_START_NEW, &no_apply, NULL, &node), SMR_E_NULL);
    EXPECT_TRUE(strstr(smr_last_error_message(), "apply") != NULL);
    EXPECT(smr_node_start(config, config_len, 99, &callbacks, NULL, &node), SMR_E_INVALID_ARGUMENT);
    EXPECT(smr_node_start(config, config_len, -1, &callbacks, NULL, &node), SMR_E_INVALID_ARGUMENT);
    EXPECT(smr_node_start("\xff\xfe", 2, SMR_START_NEW, &callbacks, NULL, &node), SMR_E_INVALID_ARGUMENT);
    size_t huge_len = (size_t)(1 << 20) + 1;
    char *huge = calloc(huge_len, 1);
    EXPECT(smr_node_start(huge, huge_len, SMR_START_NEW, &callbacks, NULL, &node), SMR_E_INVALID_ARGUMENT);
    free(huge);
    EXPECT(smr_node_start("node_id = ", 10, SMR_START_NEW, &callbacks, NULL, &node), SMR_E_CONFIG);

    /* A refused key is named in the message. */
    static char bad[1 << 17];
    int bad_len = snprintf(bad, sizeof bad, "%s\n[raft]\nelection_ticks = 0\n", config);
    EXPECT(smr_node_start(bad, (size_t)bad_len, SMR_START_NEW, &callbacks, NULL, &node), SMR_E_CONFIG);
    EXPECT_TRUE(strstr(smr_last_error_message(), "raft.election_ticks") != NULL);
    bad_len = snprintf(bad, sizeof bad, "%s\nno_such_key = 1\n", config);
    EXPECT(smr_node_start(bad, (size_t)bad_len, SMR_START_NEW, &callbacks, NULL, &node), SMR_E_CONFIG);
    EXPECT_TRUE(strstr(smr_last_error_message(), "no_such_key") != NULL);
    EXPECT(smr_node_start_file(NULL, SMR_START_NEW, &callbacks, NULL, &node), SMR_E_NULL);
    EXPECT(smr_node_start_file("/nonexistent/smr.toml", SMR_START_NEW, &callbacks, NULL, &node), SMR_E_CONFIG);
    /* An empty data directory is refused unless told to found or join. */
    EXPECT(smr_node_start(config, config_len, SMR_START_EXISTING, &callbacks, NULL, &node), SMR_E_CONFIG);
    EXPECT_TRUE(node == NULL);

    /* The helpers refuse NULL, and refuse to run outside their callback. */
    size_t got = 1;
    uint8_t byte;
    EXPECT(smr_result_set(NULL, 0, NULL, 0), SMR_E_NULL);
    EXPECT(smr_writer_write(NULL, NULL, 0), SMR_E_NULL);
    EXPECT(smr_reader_read(NULL, &byte, 1, &got), SMR_E_NULL);
    EXPECT(smr_result_set((smr_result_sink *)&byte, 0, NULL, 0), SMR_E_WRONG_THREAD);
    EXPECT(smr_writer_write((smr_writer *)&byte, NULL, 0), SMR_E_WRONG_THREAD);
    EXPECT(smr_reader_read((smr_reader *)&byte, &byte, 1, &got), SMR_E_WRONG_THREAD);
    EXPECT_TRUE(got == 0);
    smr_free_string(NULL);
    smr_buffer_free(NULL);
    EXPECT(smr_node_free(NULL), SMR_OK);

    /* A real node. */
    EXPECT(smr_node_start(config, config_len, SMR_START_NEW, &callbacks, NULL, &node), SMR_OK);
    if (node == NULL) {
        fprintf(stderr, "errors: the node did not start; %d of %d checks failed\n", failures, checks);
        return 1;
    }
    smr_status status;
    for (int attempt = 0;; attempt++) {
        status = smr_propose_sync(node, 1, 1, (const uint8_t *)"a", 1, 5000, NULL);
        if (status != SMR_E_NOT_LEADER || attempt == 500) break;
        sleep_ms(20);
    }
    EXPECT(status, SMR_OK);

    smr_buffer buffer = {(uint8_t *)&byte, 7};
    char *json = (char *)&byte;
    EXPECT(smr_propose(NULL, 1, 2, (const uint8_t *)"b", 1, NULL, NULL), SMR_E_NULL);
    EXPECT(smr_propose(node, 1, 2, NULL, 1, NULL, NULL), SMR_E_NULL);
    EXPECT(smr_propose(node, 1, 2, (const uint8_t *)"b", SIZE_MAX, NULL, NULL), SMR_E_INVALID_ARGUMENT);
    EXPECT(smr_propose_sync(NULL, 1, 2, (const uint8_t *)"b", 1, 1000, &buffer), SMR_E_NULL);
    EXPECT_TRUE(buffer.data == NULL && buffer.len == 0);
    EXPECT(smr_propose_sync(node, 1, 2, NULL, 1, 1000, NULL), SMR_E_NULL);
    EXPECT(smr_propose_sync(node, 1, 2, (const uint8_t *)"b", 1, 0, NULL), SMR_E_INVALID_ARGUMENT);
    EXPECT(smr_read_barrier(NULL, 1000), SMR_E_NULL);
    EXPECT(smr_read_barrier(node, 0), SMR_E_INVALID_ARGUMENT);
    EXPECT(smr_add_node(NULL, 2, "127.0.0.1:1", "127.0.0.1:2", 0, 1000), SMR_E_NULL);
    EXPECT(smr_add_node(node, 2, NULL, "127.0.0.1:2", 0, 1000), SMR_E_NULL);
    EXPECT(smr_add_node(node, 2, "127.0.0.1:1", NULL, 0, 1000), SMR_E_NULL);
    EXPECT(smr_add_node(node, 2, "\xff", "127.0.0.1:2", 0, 1000), SMR_E_INVALID_ARGUMENT);
    EXPECT(smr_add_node(node, 2, "127.0.0.1:1", "127.0.0.1:2", 0, 0), SMR_E_INVALID_ARGUMENT);
    EXPECT(smr_remove_node(NULL, 2, 1000), SMR_E_NULL);
    EXPECT(smr_remove_node(node, 2, 0), SMR_E_INVALID_ARGUMENT);
    EXPECT(smr_transfer_leader(NULL, 2, 1000), SMR_E_NULL);
    EXPECT(smr_status_json(node, 1000, NULL), SMR_E_NULL);
    EXPECT(smr_status_json(NULL, 1000, &json), SMR_E_NULL);
    EXPECT_TRUE(json == NULL);
    EXPECT(smr_metrics_json(node, NULL), SMR_E_NULL);
    EXPECT(smr_metrics_json(NULL, &json), SMR_E_NULL);

    /* A command the apply callback probes the blocking calls from. */
    the_node = node;
    EXPECT(smr_propose_sync(node, 1, 2, (const uint8_t *)"b", 1, 5000, NULL), SMR_OK);
    EXPECT_TRUE(apply_probed);
    EXPECT(in_apply_sync, SMR_E_WRONG_THREAD);
    EXPECT(in_apply_barrier, SMR_E_WRONG_THREAD);
    EXPECT(in_apply_stop, SMR_E_WRONG_THREAD);
    EXPECT(in_apply_free, SMR_E_WRONG_THREAD);
    EXPECT(in_apply_status, SMR_E_WRONG_THREAD);
    EXPECT(in_apply_async, SMR_OK);
    EXPECT(in_apply_bad_position, SMR_E_INVALID_ARGUMENT);
    EXPECT(smr_read_barrier(node, 5000), SMR_OK);

    /* Empty commands are commands; a NULL pointer is fine with a length of 0. */
    EXPECT(smr_propose_sync(node, 1, 3, NULL, 0, 5000, &buffer), SMR_OK);
    EXPECT_TRUE(buffer.data == NULL && buffer.len == 0);

    /* After stop, every call is refused with SMR_E_STOPPED until free. */
    EXPECT(smr_node_stop(node), SMR_OK);
    EXPECT(smr_node_stop(node), SMR_E_STOPPED);
    EXPECT(smr_propose(node, 1, 4, (const uint8_t *)"c", 1, on_complete, NULL), SMR_E_STOPPED);
    EXPECT(smr_propose_sync(node, 1, 4, (const uint8_t *)"c", 1, 1000, NULL), SMR_E_STOPPED);
    EXPECT(smr_read_barrier(node, 1000), SMR_E_STOPPED);
    EXPECT(smr_add_node(node, 2, "127.0.0.1:1", "127.0.0.1:2", 0, 1000), SMR_E_STOPPED);
    EXPECT(smr_remove_node(node, 2, 1000), SMR_E_STOPPED);
    EXPECT(smr_transfer_leader(node, 2, 1000), SMR_E_STOPPED);
    EXPECT(smr_status_json(node, 1000, &json), SMR_E_STOPPED);
    EXPECT(smr_metrics_json(node, &json), SMR_E_STOPPED);
    EXPECT(smr_node_free(node), SMR_OK);

    if (failures) {
        fprintf(stderr, "errors: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("errors: %d checks passed\n", checks);
    return 0;
}
