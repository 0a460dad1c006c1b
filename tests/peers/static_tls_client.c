/* A TLS client for observer's tests, linked statically against OpenSSL (libssl.a, libcrypto.a)
 * at test time: no libssl.so is ever mapped, so only uprobes on the executable itself see it.
 *
 * usage: static_tls_client PORT SNI CA_FILE CIPHERSUITES ALPN
 *
 * Prints {"pid": N, "openssl": "OpenSSL 3.0.x ..."}, waits for a line on stdin, connects to
 * 127.0.0.1:PORT, runs a TLS 1.3 handshake (SNI, ALPN offered, the certificate verified for
 * SNI against CA_FILE), sends one HTTP/1.1 request, and prints {"ok": true, "version",
 * "cipher", "alpn", "handshake_ns" (the SSL_connect call, CLOCK_MONOTONIC), "status"} or
 * {"ok": false, "error": "..."}; then closes the connection and exits at the next line (or
 * end) of stdin.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *what) {
    char reason[256] = "";
    ERR_error_string_n(ERR_get_error(), reason, sizeof reason);
    printf("{\"ok\": false, \"error\": \"%s: %s\"}\n", what, reason);
    return 1;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s PORT SNI CA_FILE CIPHERSUITES ALPN\n", argv[0]);
        return 2;
    }
    const char *sni = argv[2], *alpn = argv[5];
    printf("{\"pid\": %d, \"openssl\": \"%s\"}\n", (int)getpid(), OpenSSL_version(OPENSSL_VERSION));
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        return 2;

    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
        !SSL_CTX_set_ciphersuites(ctx, argv[4]) ||
        SSL_CTX_load_verify_locations(ctx, argv[3], NULL) != 1)
        return fail("context");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* ALPN in wire format: one length-prefixed name. */
    unsigned char protos[64];
    size_t n = strlen(alpn);
    if (n == 0 || n >= sizeof protos)
        return 2;
    protos[0] = (unsigned char)n;
    memcpy(protos + 1, alpn, n);
    if (SSL_CTX_set_alpn_protos(ctx, protos, (unsigned)n + 1) != 0)
        return fail("alpn");

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof to) != 0) {
        printf("{\"ok\": false, \"error\": \"connect\"}\n");
        return 1;
    }
    SSL *ssl = SSL_new(ctx);
    if (!ssl || !SSL_set_fd(ssl, fd) || !SSL_set_tlsext_host_name(ssl, sni) ||
        !SSL_set1_host(ssl, sni))
        return fail("session");
    long long start = now_ns();
    int rc = SSL_connect(ssl);
    long long took = now_ns() - start;
    if (rc != 1)
        return fail("handshake");
    const unsigned char *chosen = NULL;
    unsigned chosen_len = 0;
    SSL_get0_alpn_selected(ssl, &chosen, &chosen_len);

    char request[256];
    int len = snprintf(request, sizeof request,
                       "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", sni);
    char reply[512] = "";
    int got = 0;
    if (SSL_write(ssl, request, len) == len)
        got = SSL_read(ssl, reply, sizeof reply - 1);
    reply[got > 0 ? got : 0] = 0;
    reply[strcspn(reply, "\r\n")] = 0;
    printf("{\"ok\": true, \"version\": \"%s\", \"cipher\": \"%s\", \"alpn\": \"%.*s\", "
           "\"handshake_ns\": %lld, \"status\": \"%s\"}\n",
           SSL_get_version(ssl), SSL_CIPHER_standard_name(SSL_get_current_cipher(ssl)),
           (int)chosen_len, chosen ? (const char *)chosen : "", took, reply);
    fflush(stdout);
    SSL_shutdown(ssl);
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
    /* Alive until told: the socket's record names a running process. */
    fgets(line, sizeof line, stdin);
    return 0;
}
