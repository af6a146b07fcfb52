/*
 * walg-daemon-client, compiled: the client of `walg daemon` for archive_command and
 * restore_command when even a Python interpreter's start-up (several milliseconds) is too much.
 *
 * Same command line, protocol, messages and exit codes as walg/daemon_client.py:
 *   walg-daemon-client SOCKET wal-push PATH
 *   walg-daemon-client SOCKET wal-fetch NAME DEST
 *   walg-daemon-client SOCKET check
 * A message is one type byte, a big-endian uint16 total length, the body; the reply is one
 * byte: O done, N not in the archive, E error. Exit codes: 0 done, 74 not in the archive,
 * 1 anything else, 2 usage. A push whose daemon is not running fails (PostgreSQL keeps the WAL
 * and retries); a fetch whose daemon is not running execs `walg wal-fetch` directly, because
 * failing it would end recovery early. WALG_DAEMON_CLIENT_TIMEOUT (seconds, default 300)
 * bounds the wait for the daemon.
 *
 * Built by `walg build-daemon-client`, which defines WALG_PATH (the walg executable for the
 * direct fetch). libc only.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef WALG_PATH
#define WALG_PATH "walg"
#endif

#define EXIT_DONE 0
#define EXIT_FAILED 1
#define EXIT_USAGE 2
#define EXIT_NOT_FOUND 74
#define MAX_MESSAGE 65535
#define DEFAULT_TIMEOUT 300.0

static const char usage[] =
    "usage: walg-daemon-client SOCKET (wal-push PATH | wal-fetch NAME DEST | check)\n";

struct message {
    unsigned char data[MAX_MESSAGE];
    size_t len;
};

static int put_bytes(struct message *m, const void *bytes, size_t n)
{
    if (m->len + n > MAX_MESSAGE)
        return -1;
    memcpy(m->data + m->len, bytes, n);
    m->len += n;
    return 0;
}

static int put_u16(struct message *m, size_t value)
{
    unsigned char be[2] = {(unsigned char)(value >> 8), (unsigned char)(value & 0xff)};
    return value > 0xffff ? -1 : put_bytes(m, be, 2);
}

/* An argument as the daemon's parse_args reads it: uint16 length, then the bytes. */
static int put_arg(struct message *m, const char *value)
{
    size_t n = strlen(value);
    return put_u16(m, n) == 0 ? put_bytes(m, value, n) : -1;
}

static int build(struct message *m, int argc, char **argv)
{
    const char *command = argv[2];
    m->len = 3;
    if (strcmp(command, "wal-push") == 0 && argc == 4) {
        const char *slash = strrchr(argv[3], '/');
        const char *name = slash ? slash + 1 : argv[3];
        m->data[0] = 'F';
        if (put_bytes(m, name, strlen(name)) != 0)
            return -1;
    } else if (strcmp(command, "wal-fetch") == 0 && argc == 5) {
        unsigned char count = 2;
        m->data[0] = 'f';
        if (put_bytes(m, &count, 1) != 0 || put_arg(m, argv[3]) != 0 || put_arg(m, argv[4]) != 0)
            return -1;
    } else if (strcmp(command, "check") == 0 && argc == 3) {
        m->data[0] = 'C';
    } else {
        return -1;
    }
    m->data[1] = (unsigned char)(m->len >> 8);
    m->data[2] = (unsigned char)(m->len & 0xff);
    return 0;
}

static int timeout_from_env(struct timeval *tv)
{
    const char *text = getenv("WALG_DAEMON_CLIENT_TIMEOUT");
    double seconds = DEFAULT_TIMEOUT;
    if (text != NULL) {
        char *end;
        errno = 0;
        seconds = strtod(text, &end);
        if (errno != 0 || end == text || *end != '\0' || !(seconds > 0) || seconds > 1e9) {
            fprintf(stderr,
                    "walg-daemon-client: WALG_DAEMON_CLIENT_TIMEOUT=%s is not a positive number "
                    "of seconds; nothing was done\n",
                    text);
            return -1;
        }
    }
    tv->tv_sec = (time_t)seconds;
    tv->tv_usec = (suseconds_t)((seconds - (double)tv->tv_sec) * 1e6);
    if (tv->tv_sec == 0 && tv->tv_usec == 0)
        tv->tv_usec = 1;
    return 0;
}

static int send_all(int fd, const unsigned char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static const char *why(int err)
{
    return err == EAGAIN || err == EWOULDBLOCK || err == EINPROGRESS ? "timed out" : strerror(err);
}

int main(int argc, char **argv)
{
    static struct message m;
    struct sockaddr_un addr;
    struct timeval tv;
    unsigned char reply;
    ssize_t got;
    int fd;

    if (argc < 3 || build(&m, argc, argv) != 0) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    const char *path = argv[1], *command = argv[2];
    int fetch = m.data[0] == 'f';
    if (timeout_from_env(&tv) != 0)
        return EXIT_FAILED;
    if (strlen(path) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "walg-daemon-client: socket path %s is too long; nothing was done\n", path);
        return EXIT_FAILED;
    }
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path, strlen(path));

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0) {
        fprintf(stderr, "walg-daemon-client: no socket: %s; nothing was done\n", strerror(errno));
        return EXIT_FAILED;
    }
    while (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        int err = errno;
        if (err == EINTR)
            continue;
        if (err == ENOENT || err == ECONNREFUSED) {
            close(fd);
            if (fetch) {
                fprintf(stderr,
                        "walg-daemon-client: no daemon at %s (%s); fetching directly\n", path,
                        strerror(err));
                execl(WALG_PATH, WALG_PATH, "wal-fetch", argv[3], argv[4], (char *)NULL);
                fprintf(stderr, "walg-daemon-client: cannot run %s: %s\n", WALG_PATH,
                        strerror(errno));
                return EXIT_FAILED;
            }
            fprintf(stderr,
                    "walg-daemon-client: walg daemon is not running at %s (%s); nothing was "
                    "done\n",
                    path, strerror(err));
            return EXIT_FAILED;
        }
        fprintf(stderr,
                "walg-daemon-client: talking to %s failed: %s; nothing is known to be done\n",
                path, why(err));
        return EXIT_FAILED;
    }
    if (send_all(fd, m.data, m.len) != 0) {
        fprintf(stderr,
                "walg-daemon-client: talking to %s failed: %s; nothing is known to be done\n",
                path, why(errno));
        return EXIT_FAILED;
    }
    do {
        got = recv(fd, &reply, 1, 0);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
        fprintf(stderr,
                "walg-daemon-client: talking to %s failed: %s; nothing is known to be done\n",
                path, why(errno));
        return EXIT_FAILED;
    }
    close(fd);
    if (got == 1 && reply == 'O')
        return EXIT_DONE;
    if (got == 1 && reply == 'N')
        return EXIT_NOT_FOUND;
    if (got == 1 && reply == 'E')
        fprintf(stderr,
                "walg-daemon-client: %s failed: the daemon answered an error (see the daemon's "
                "log)\n",
                command);
    else if (got == 1)
        fprintf(stderr, "walg-daemon-client: %s failed: the daemon answered no valid reply 0x%02x\n",
                command, reply);
    else
        fprintf(stderr, "walg-daemon-client: %s failed: the daemon closed without a reply\n",
                command);
    return EXIT_FAILED;
}
