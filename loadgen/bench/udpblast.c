/* The UDP far end's load and its floor, in C: a STAMP blaster and the smallest UDP echo.
 *
 * blast PORT RATE SECONDS SIZE: one UDP socket sends STAMP test packets (RFC 8762 4.2.1:
 * sequence number, NTP timestamp, error estimate, SSID 0, zeros; SIZE bytes, at least 44) to
 * 127.0.0.1:PORT in sendmmsg(2) batches, RATE per second on an absolute 1 ms timetable (0: as
 * fast as it can), reads what came back with recvmmsg(2) after every batch, and waits DRAIN_MS
 * for the last replies after SECONDS. Prints "sent N received M seconds S".
 *
 * echo PORT SECONDS: recvmmsg, then one sendmmsg of the same datagrams back to their senders,
 * until SECONDS have passed or SIGINT/SIGTERM. Prints "echoed N". What any UDP far end costs on
 * this kernel with no work per packet: the floor `loadgen reflect` is compared with, and the
 * echo service of loadgen's --udp probes.
 *
 * Loopback only (127.0.0.1). Built by the bench with the system C compiler.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 256
#define MAX_SIZE 1472
#define DRAIN_MS 300
#define NTP_EPOCH_OFFSET 2208988800ULL /* 1900 to 1970 */

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig, stop = 1; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_until(double t) {
    struct timespec ts = {(time_t)t, (long)((t - (double)(time_t)t) * 1e9)};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

static int udp_socket(int port) { /* port 0: any */
    int fd = socket(AF_INET, SOCK_DGRAM, 0), buf = 8 << 20;
    if (fd < 0) return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    me.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) return -1;
    return fd;
}

static uint8_t buf[MAX_BATCH][MAX_SIZE + 64];
static struct mmsghdr msg[MAX_BATCH], rmsg[MAX_BATCH];
static struct iovec iov[MAX_BATCH], riov[MAX_BATCH];
static struct sockaddr_in peer[MAX_BATCH];
static uint8_t rbuf[MAX_BATCH][MAX_SIZE + 64];

static unsigned long long drain(int fd) { /* every reply waiting, without blocking */
    unsigned long long got = 0;
    for (;;) {
        for (int i = 0; i < MAX_BATCH; i++) {
            riov[i] = (struct iovec){rbuf[i], sizeof rbuf[i]};
            rmsg[i].msg_hdr = (struct msghdr){.msg_iov = &riov[i], .msg_iovlen = 1};
        }
        int n = recvmmsg(fd, rmsg, MAX_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) return got;
        got += (unsigned long long)n;
        if (n < MAX_BATCH) return got;
    }
}

static int blast(int port, double rate, double seconds, int size) {
    int fd = udp_socket(0);
    if (fd < 0) {
        perror("udpblast: socket");
        return 2;
    }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < MAX_BATCH; i++) {
        memset(buf[i], 0, (size_t)size);
        iov[i] = (struct iovec){buf[i], (size_t)size};
        msg[i].msg_hdr = (struct msghdr){.msg_name = &dst, .msg_namelen = sizeof dst,
                                         .msg_iov = &iov[i], .msg_iovlen = 1};
    }
    unsigned long long sent = 0, received = 0;
    uint32_t seq = 0;
    double start = now_s(), end = start + seconds, t;
    while ((t = now_s()) < end && !stop) {
        /* Due by the timetable; a late tick sends what it owes, a batch at a time. */
        unsigned long long due = rate > 0 ? (unsigned long long)((t - start) * rate) + 1 : sent + MAX_BATCH;
        if (due <= sent) {
            sleep_until(start + (double)((long long)((t - start) * 1000) + 1) / 1000);
            continue;
        }
        int n = due - sent > MAX_BATCH ? MAX_BATCH : (int)(due - sent);
        struct timespec wall;
        clock_gettime(CLOCK_REALTIME, &wall);
        uint32_t secs = (uint32_t)((unsigned long long)wall.tv_sec + NTP_EPOCH_OFFSET);
        uint32_t frac = (uint32_t)(((unsigned long long)wall.tv_nsec << 32) / 1000000000ULL);
        for (int i = 0; i < n; i++, seq++) {
            uint8_t *p = buf[i];
            uint32_t f[3] = {htonl(seq), htonl(secs), htonl(frac)};
            memcpy(p, f, sizeof f);
            p[12] = 0x80, p[13] = 0x01; /* error estimate: S (synchronised), scale 0, multiplier 1 */
        }
        int went = sendmmsg(fd, msg, (unsigned)n, 0);
        if (went < 0 && errno != ENOBUFS && errno != EAGAIN && errno != EINTR && errno != ECONNREFUSED) {
            perror("udpblast: sendmmsg");
            return 1;
        }
        if (went < n) seq -= (uint32_t)(n - (went > 0 ? went : 0));
        sent += went > 0 ? (unsigned long long)went : 0;
        received += drain(fd);
    }
    double sending_s = now_s() - start;
    for (double until = now_s() + DRAIN_MS / 1e3; now_s() < until;) {
        received += drain(fd);
        usleep(1000);
    }
    printf("sent %llu received %llu seconds %.6f\n", sent, received, sending_s);
    return 0;
}

static int echo(int port, double seconds) {
    int fd = udp_socket(port);
    if (fd < 0) {
        perror("udpblast: echo socket on 127.0.0.1");
        return 2;
    }
    struct timeval tick = {0, 100000}; /* wake every 100 ms to see the clock and signals */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tick, sizeof tick);
    unsigned long long echoed = 0;
    double end = now_s() + seconds;
    while (!stop && now_s() < end) {
        for (int i = 0; i < MAX_BATCH; i++) {
            iov[i] = (struct iovec){buf[i], sizeof buf[i]};
            msg[i].msg_hdr = (struct msghdr){.msg_name = &peer[i], .msg_namelen = sizeof peer[i],
                                             .msg_iov = &iov[i], .msg_iovlen = 1};
        }
        int n = recvmmsg(fd, msg, MAX_BATCH, MSG_WAITFORONE, NULL);
        if (n <= 0) continue;
        for (int i = 0; i < n; i++) iov[i].iov_len = msg[i].msg_len;
        int went = sendmmsg(fd, msg, (unsigned)n, 0);
        echoed += went > 0 ? (unsigned long long)went : 0;
    }
    printf("echoed %llu\n", echoed);
    return 0;
}

int main(int argc, char **argv) {
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: a blocked recv returns */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (argc == 6 && strcmp(argv[1], "blast") == 0) {
        int port = atoi(argv[2]), size = atoi(argv[5]);
        double rate = atof(argv[3]), seconds = atof(argv[4]);
        if (port < 1 || port > 65535 || rate < 0 || seconds <= 0 || seconds > 60 || size < 44 ||
            size > MAX_SIZE) {
            fprintf(stderr, "udpblast: bad arguments\n");
            return 2;
        }
        return blast(port, rate, seconds, size);
    }
    if (argc == 4 && strcmp(argv[1], "echo") == 0) {
        int port = atoi(argv[2]);
        double seconds = atof(argv[3]);
        if (port < 1 || port > 65535 || seconds <= 0 || seconds > 600) {
            fprintf(stderr, "udpblast: bad arguments\n");
            return 2;
        }
        return echo(port, seconds);
    }
    fprintf(stderr, "usage: udpblast blast PORT RATE SECONDS SIZE | udpblast echo PORT SECONDS\n");
    return 2;
}
