/* A client that lives well under a millisecond: connects to 127.0.0.1:<port>, sends 9 bytes,
 * prints {"pid":…,"port":…} and exits without closing, so the kernel closes the socket as the
 * process dies and the observer can never read this process's /proc entry. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof to) != 0) {
        perror("connect");
        return 1;
    }
    if (write(fd, "zzzzzzzzz", 9) != 9) {
        perror("write");
        return 1;
    }
    struct sockaddr_in me;
    socklen_t len = sizeof me;
    getsockname(fd, (struct sockaddr *)&me, &len);
    printf("{\"pid\": %d, \"port\": %d}\n", getpid(), ntohs(me.sin_port));
    fflush(stdout);
    _exit(0);
}
