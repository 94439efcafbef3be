/* The kernel floor: what the bench's lab costs with no tool around the syscalls at all.
 *
 * The smallest program that does loadgen's work on the wire: one raw ICMP socket per worker
 * process pinned to its own CPU, a classic-BPF filter on the worker's identifier, software RX
 * timestamps on, echo requests (RFC 792) to every target in turn, one sendmmsg(2) per batch,
 * then recvmmsg(2) until the socket is empty. No pacing: it sends as fast as the kernel lets
 * it, so its rate is the ceiling for any tool using raw sockets on this machine, and its CPU
 * per probe the kernel's own share (the responder's work over veth runs inside our sendmmsg).
 *
 * With TX_STAMPS 1 every packet also gets a kernel software TX timestamp (OPT_ID, OPT_TSONLY),
 * read back from the error queue in batches after each send, as loadgen's --tx-timestamps does.
 *
 * usage: floor SECONDS WORKERS BATCH TX_STAMPS ADDRESS...
 * Prints one line per worker, "sent N received M stamps S", and exits 0.
 * Built by the bench with the system C compiler; nothing else of loadgen depends on it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 256
#define MAX_TARGETS 1024
#define PAYLOAD 56 /* loadgen's default probe size */
#define MSG_LEN (8 + PAYLOAD)
/* SOF_TIMESTAMPING_* of <linux/net_tstamp.h> */
#define SOF_TX_SOFTWARE (1 << 1)
#define SOF_RX_SOFTWARE (1 << 3)
#define SOF_SOFTWARE (1 << 4)
#define SOF_OPT_ID (1 << 7)
#define SOF_OPT_TSONLY (1 << 11)
#ifndef SO_TIMESTAMPING
#define SO_TIMESTAMPING 37
#endif

static uint16_t checksum(const uint8_t *p, int n) { /* RFC 1071 */
    uint32_t sum = 0;
    for (int i = 0; i + 1 < n; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (n & 1) sum += (uint32_t)p[n - 1] << 8;
    while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
    return (uint16_t)~sum;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int open_socket(uint16_t ident, int tx_stamps) {
    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    if (fd < 0) return -1;
    /* Accept ICMP whose identifier (after the IP header) is ours, as loadgen's filter does. */
    struct sock_filter code[] = {
        BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 0),
        BPF_STMT(BPF_LD | BPF_H | BPF_IND, 4),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ident, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, 0xFFFF),
        BPF_STMT(BPF_RET | BPF_K, 0),
    };
    struct sock_fprog prog = {sizeof code / sizeof code[0], code};
    int flags = SOF_RX_SOFTWARE | SOF_SOFTWARE, buf = 4 << 20;
    if (tx_stamps) flags |= SOF_TX_SOFTWARE | SOF_OPT_ID | SOF_OPT_TSONLY;
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &flags, sizeof flags) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf) < 0)
        return -1;
    return fd;
}

static int run_worker(int worker, double seconds, int batch, int tx_stamps, struct sockaddr_in *dst,
                      int n) {
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(worker % sysconf(_SC_NPROCESSORS_ONLN), &cpus);
    sched_setaffinity(0, sizeof cpus, &cpus);
    uint16_t ident = (uint16_t)(0x7000 + worker);
    int fd = open_socket(ident, tx_stamps);
    if (fd < 0) {
        perror("floor: raw ICMP socket (run as root)");
        return 2;
    }
    static uint8_t tx[MAX_BATCH][MSG_LEN], rx[MAX_BATCH][2048], ctrl[MAX_BATCH][256];
    static struct mmsghdr tmsg[MAX_BATCH], rmsg[MAX_BATCH];
    static struct iovec tiov[MAX_BATCH], riov[MAX_BATCH];
    for (int i = 0; i < batch; i++) {
        tiov[i] = (struct iovec){tx[i], MSG_LEN};
        riov[i] = (struct iovec){rx[i], sizeof rx[i]};
        tmsg[i].msg_hdr = (struct msghdr){.msg_iov = &tiov[i], .msg_iovlen = 1,
                                          .msg_namelen = sizeof(struct sockaddr_in)};
        rmsg[i].msg_hdr = (struct msghdr){.msg_iov = &riov[i], .msg_iovlen = 1};
    }
    unsigned long long sent = 0, received = 0, stamps = 0;
    uint16_t seq = 0;
    int next = worker % n;
    double end = now_s() + seconds;
    while (now_s() < end) {
        for (int i = 0; i < batch; i++, seq++) {
            uint8_t *m = tx[i];
            memset(m, 0, MSG_LEN);
            m[0] = 8; /* echo request */
            m[4] = ident >> 8, m[5] = ident & 0xFF, m[6] = seq >> 8, m[7] = seq & 0xFF;
            uint16_t c = checksum(m, MSG_LEN);
            m[2] = c >> 8, m[3] = c & 0xFF;
            tmsg[i].msg_hdr.msg_name = &dst[next];
            next = (next + 1) % n;
        }
        int went = sendmmsg(fd, tmsg, batch, 0);
        if (went < 0 && errno != ENOBUFS && errno != EAGAIN && errno != EINTR) {
            perror("floor: sendmmsg");
            return 1;
        }
        sent += went > 0 ? went : 0;
        for (;;) {
            for (int i = 0; i < batch; i++) {
                rmsg[i].msg_hdr.msg_control = ctrl[i];
                rmsg[i].msg_hdr.msg_controllen = sizeof ctrl[i];
            }
            int got = recvmmsg(fd, rmsg, batch, MSG_DONTWAIT, NULL);
            if (got <= 0) break;
            for (int i = 0; i < got; i++) /* echo replies only, as the kernel's InEchoReps */
                received += rmsg[i].msg_len > 20 && rx[i][(rx[i][0] & 0xF) * 4] == 0;
            if (got < batch) break;
        }
        for (int more = tx_stamps; more;) {
            for (int i = 0; i < batch; i++) {
                rmsg[i].msg_hdr.msg_control = ctrl[i];
                rmsg[i].msg_hdr.msg_controllen = sizeof ctrl[i];
            }
            int got = recvmmsg(fd, rmsg, batch, MSG_ERRQUEUE | MSG_DONTWAIT, NULL);
            stamps += got > 0 ? got : 0;
            more = got == batch;
        }
    }
    printf("sent %llu received %llu stamps %llu\n", sent, received, stamps);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: floor SECONDS WORKERS BATCH TX_STAMPS ADDRESS...\n");
        return 2;
    }
    double seconds = atof(argv[1]);
    int workers = atoi(argv[2]), batch = atoi(argv[3]), tx_stamps = atoi(argv[4]), n = argc - 5;
    if (seconds <= 0 || workers < 1 || workers > 64 || batch < 1 || batch > MAX_BATCH ||
        n > MAX_TARGETS || (tx_stamps != 0 && tx_stamps != 1)) {
        fprintf(stderr, "floor: bad arguments\n");
        return 2;
    }
    static struct sockaddr_in dst[MAX_TARGETS];
    for (int i = 0; i < n; i++) {
        dst[i].sin_family = AF_INET;
        if (inet_pton(AF_INET, argv[5 + i], &dst[i].sin_addr) != 1) {
            fprintf(stderr, "floor: not an IPv4 address: %s\n", argv[5 + i]);
            return 2;
        }
    }
    fflush(stdout);
    for (int w = 0; w < workers; w++) {
        pid_t pid = fork();
        if (pid == 0) {
            int rc = run_worker(w, seconds, batch, tx_stamps, dst, n);
            fflush(stdout);
            _exit(rc);
        }
        if (pid < 0) {
            perror("floor: fork");
            return 1;
        }
    }
    int worst = 0, status;
    while (wait(&status) > 0)
        if (!WIFEXITED(status) || WEXITSTATUS(status)) worst = 1;
    return worst;
}
