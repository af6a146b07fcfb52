/*
 * walg-daemon-client, compiled: the client of `walg daemon` for archive_command and
 * restore_command when even a Python interpreter's start-up (several milliseconds) is too much.
 *
 * Same command line, protocol, messages and exit codes as walg/daemon_client.py:
 *   walg-daemon-client SOCKET wal-push PATH
 *   walg-daemon-client SOCKET wal-fetch NAME DEST
 *   walg-daemon-client SOCKET check
 * A message is one type byte, a big-endian uint16 total length, the body; the reply is one
 * byte: O done, N not in the archive, E error. PATH and DEST are sent as absolute paths
 * (PostgreSQL runs the command in its data directory, so %p is relative to it): a daemon
 * serving another cluster refuses them instead of archiving or overwriting its files. Before
 * anything is sent, the process listening on SOCKET must run as this user or as root
 * (SO_PEERCRED): anyone else's listener could answer "done" to every push.
 *
 * Exit codes: 0 done, 74 not in the archive, 2 usage, 1 any other failure, except a failed
 * (or wrongly given) wal-fetch in archive recovery (recovery.signal and no standby.signal in
 * the directory above DEST's directory, as %p is pg_wal/RECOVERYXLOG, or in the working
 * directory PostgreSQL runs the command in; before PostgreSQL 12 a recovery.conf there
 * that does not turn standby_mode on): 128 there. PostgreSQL takes a
 * restore_command status of 1 to 125 for "not in the archive" and would end recovery and
 * promote, losing the WAL it could not read; above 125 it stops recovery, loudly. A standby
 * retries (and streams), so it gets 1. A push whose daemon is not running fails (PostgreSQL
 * keeps the WAL and retries); a fetch whose daemon is not running execs `walg wal-fetch`
 * directly, because failing it would end recovery early. A request the daemon accepted but
 * closed without answering (reset, broken pipe, end of stream: it was stopped or died) is
 * run by walg directly, a push too: the daemon discards a fetch whose client has gone, and
 * `walg wal-push` never replaces an archived object (equal content is success).
 * WALG_DAEMON_CLIENT_TIMEOUT (seconds, default 300) bounds the wait for the daemon, a full
 * listen queue included.
 *
 * Built by `walg build-daemon-client`, which defines WALG_PATH (the walg executable for the
 * direct fetch). libc only.
 */
#define _GNU_SOURCE /* struct ucred */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef WALG_PATH
#define WALG_PATH "walg"
#endif

#define EXIT_DONE 0
#define EXIT_FAILED 1
#define EXIT_USAGE 2
#define EXIT_NOT_FOUND 74
#define EXIT_ABORT_RECOVERY 128
#define MAX_MESSAGE 65535
#define DEFAULT_TIMEOUT 300.0

static const char usage[] =
    "usage: walg-daemon-client SOCKET (wal-push PATH | wal-fetch NAME DEST | check) "
    "[-timeout DURATION]\n";

struct message {
    unsigned char data[MAX_MESSAGE];
    size_t len;
};

/* The absolute path sent for PATH or DEST; for a fetch, also what decides the exit code. */
static char target[MAX_MESSAGE + 1];
static int fetch;

static int put_bytes(struct message *m, const void *bytes, size_t n)
{
    if (n > MAX_MESSAGE - m->len)
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

/*
 * Lexical normalisation of an absolute path, as Python's os.path.abspath does it: no "." or
 * ".." components, no repeated or trailing slashes. Symbolic links are not followed: pg_wal is
 * often one, and the data directory is the parent of the name, not of the link's target. Done
 * in place: every component written was preceded by at least one slash read, so the writing
 * never overtakes the reading.
 */
static void normalize(char *path)
{
    const char *in = path;
    size_t len = 0;
    while (*in != '\0') {
        while (*in == '/')
            in++;
        if (*in == '\0')
            break;
        const char *end = strchr(in, '/');
        size_t n = end != NULL ? (size_t)(end - in) : strlen(in);
        if (n == 2 && in[0] == '.' && in[1] == '.') {
            while (len > 0 && path[len - 1] != '/')
                len--;
            if (len > 0)
                len--;
        } else if (!(n == 1 && in[0] == '.')) {
            path[len++] = '/';
            memmove(path + len, in, n);
            len += n;
        }
        in += n;
    }
    if (len == 0)
        path[len++] = '/';
    path[len] = '\0';
}

/*
 * target = the absolute, normalised form of path; -1 (errno set, target empty) when that is
 * impossible.
 */
static int make_target(const char *path)
{
    size_t n = strlen(path), used = 0;
    if (path[0] != '/') {
        if (getcwd(target, sizeof(target)) == NULL) {
            target[0] = '\0';
            return -1;
        }
        used = strlen(target);
        if (used + 1 >= sizeof(target)) {
            target[0] = '\0';
            errno = ENAMETOOLONG;
            return -1;
        }
        target[used++] = '/';
    }
    if (n >= sizeof(target) - used) {
        target[0] = '\0';
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(target + used, path, n + 1);
    normalize(target);
    return 0;
}

/* 0 built; -1 usage error; -2 the arguments cannot be sent (errno set). */
static int build(struct message *m, int argc, char **argv)
{
    const char *command = argv[2];
    m->len = 3;
    if (strcmp(command, "wal-push") == 0 && argc == 4) {
        m->data[0] = 'F';
        if (make_target(argv[3]) != 0)
            return -2;
        if (put_bytes(m, target, strlen(target)) != 0) {
            errno = ENAMETOOLONG;
            return -2;
        }
    } else if (strcmp(command, "wal-fetch") == 0 && argc == 5) {
        unsigned char count = 2;
        m->data[0] = 'f';
        fetch = 1;
        if (make_target(argv[4]) != 0)
            return -2;
        if (put_bytes(m, &count, 1) != 0 || put_arg(m, argv[3]) != 0 || put_arg(m, target) != 0) {
            errno = ENAMETOOLONG;
            return -2;
        }
    } else if (strcmp(command, "check") == 0 && argc == 3) {
        m->data[0] = 'C';
    } else {
        return -1;
    }
    m->data[1] = (unsigned char)(m->len >> 8);
    m->data[2] = (unsigned char)(m->len & 0xff);
    return 0;
}

/* dir + "/" + name, in a buffer of its own; NULL when that does not fit. */
static const char *in_dir(const char *dir, const char *name)
{
    static char buf[MAX_MESSAGE + 32];
    int n = snprintf(buf, sizeof(buf), "%s/%s", dir, name);
    return n > 0 && (size_t)n < sizeof(buf) ? buf : NULL;
}

/* Whether the file named by dir + "/" + name exists (stat follows links, as Python's does). */
static int exists_in(const char *dir, const char *name)
{
    struct stat st;
    const char *file = in_dir(dir, name);
    return file != NULL && stat(file, &st) == 0;
}

/* A boolean setting's value as PostgreSQL's parse_bool takes it for true. */
static int bool_true(const char *value, size_t len)
{
    if (len == 0)
        return 0;
    return (len == 1 && value[0] == '1') || (len == 2 && strncasecmp(value, "on", 2) == 0) ||
           (len <= 4 && strncasecmp(value, "true", len) == 0) ||
           (len <= 3 && strncasecmp(value, "yes", len) == 0);
}

/*
 * Whether dir's recovery.conf (PostgreSQL before 12) turns standby_mode on: its last setting
 * counts, as PostgreSQL reads the file. One that cannot be read, or is not a regular file,
 * turns nothing on.
 */
static int standby_mode_on(const char *dir)
{
    static char line[4096];
    const char *conf = in_dir(dir, "recovery.conf");
    /* Not blocking: a FIFO there would hang the call PostgreSQL waits on. */
    int fd = conf != NULL ? open(conf, O_RDONLY | O_NONBLOCK | O_CLOEXEC) : -1;
    struct stat st;
    FILE *f;
    int on = 0, whole = 1;
    if (fd < 0)
        return 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (f = fdopen(fd, "r")) == NULL) {
        (void)close(fd);
        return 0;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        int start = whole; /* the rest of a line longer than the buffer is no setting */
        size_t n = strlen(line), len;
        char *p = line + strspn(line, " \t\r");
        whole = n > 0 && line[n - 1] == '\n';
        if (!start || strncmp(p, "standby_mode", 12) != 0 || p[12] == '\0' ||
            strchr(" \t\r=", p[12]) == NULL)
            continue;
        p += 12 + strspn(p + 12, " \t\r");
        if (*p == '=')
            p += 1 + strspn(p + 1, " \t\r");
        if (*p == '\'') {
            p++;
            len = strcspn(p, "'\n");
        } else {
            len = strcspn(p, " \t\r\n#");
        }
        on = bool_true(p, len);
    }
    (void)fclose(f);
    return on;
}

/*
 * Whether dir is a data directory in archive recovery, not a standby: from PostgreSQL 12
 * recovery.signal without standby.signal, before it a recovery.conf without standby_mode on
 * (backup-fetch --restore-command writes one for those servers).
 */
static int in_archive_recovery(const char *dir)
{
    if (exists_in(dir, "recovery.signal"))
        return !exists_in(dir, "standby.signal");
    return exists_in(dir, "recovery.conf") && !standby_mode_on(dir);
}

/* The exit code of a failure other than "not in the archive" (see the comment at the top). */
static int failed(void)
{
    char *slash;
    if (!fetch || target[0] == '\0')
        return EXIT_FAILED;
    /* PGDATA: DEST's directory's directory ("/" stays "/"). */
    for (int i = 0; i < 2; i++) {
        slash = strrchr(target, '/');
        if (slash == NULL) { /* a relative DEST, only when the working directory is unknown */
            strcpy(target, strcmp(target, ".") == 0 ? ".." : ".");
            continue;
        }
        if (slash == target)
            slash[1] = '\0';
        else
            *slash = '\0';
    }
    if (strcmp(target, "/") == 0)
        target[0] = '\0'; /* so that "/recovery.signal" is not "//recovery.signal" */
    /* "." too: PostgreSQL runs restore_command in the data directory, and with swapped
     * arguments ('wal-fetch %p %f') DEST's directory's directory is its parent. */
    if (in_archive_recovery(target) || in_archive_recovery("."))
        return EXIT_ABORT_RECOVERY;
    return EXIT_FAILED;
}

static int timeout_from_env(struct timeval *tv, double flag_timeout)
{
    const char *text = flag_timeout > 0 ? NULL : getenv("WALG_DAEMON_CLIENT_TIMEOUT");
    double seconds = flag_timeout > 0 ? flag_timeout : DEFAULT_TIMEOUT;
    if (text != NULL) {
        /* As the Python client reads it: a decimal number (no hexadecimal, no inf or nan),
         * white space around it allowed. */
        const char *start = text, *stop, *rest;
        char *end = NULL;
        while (*start == ' ' || (*start >= '\t' && *start <= '\r'))
            start++;
        stop = start;
        while (*stop != '\0' && strchr("0123456789.eE+-", *stop) != NULL)
            stop++;
        rest = stop;
        while (*rest == ' ' || (*rest >= '\t' && *rest <= '\r'))
            rest++;
        errno = 0;
        seconds = stop > start && *rest == '\0' ? strtod(start, &end) : 0.0;
        if (errno != 0 || end != stop || !(seconds > 0) || seconds > 1e9) {
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

/*
 * One deadline for the whole call: the connect (a full listen queue), the send and the wait for
 * the answer share the timeout instead of each having all of it. Sets the socket's timeouts to
 * what is left; -1 (errno ETIMEDOUT) once nothing is.
 */
static struct timespec deadline;

static int start_deadline(const struct timeval *tv)
{
    if (clock_gettime(CLOCK_MONOTONIC, &deadline) != 0)
        return -1;
    deadline.tv_sec += tv->tv_sec;
    deadline.tv_nsec += (long)tv->tv_usec * 1000;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000L;
    }
    return 0;
}

static int time_left(int fd)
{
    struct timespec now;
    struct timeval left;
    long long ns;
    if (clock_gettime(CLOCK_MONOTONIC, &now) != 0)
        return -1;
    ns = (long long)(deadline.tv_sec - now.tv_sec) * 1000000000LL + (deadline.tv_nsec - now.tv_nsec);
    if (ns <= 0) {
        errno = ETIMEDOUT;
        return -1;
    }
    left.tv_sec = (time_t)(ns / 1000000000LL);
    left.tv_usec = (suseconds_t)((ns % 1000000000LL) / 1000);
    if (left.tv_sec == 0 && left.tv_usec == 0)
        left.tv_usec = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &left, sizeof(left)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &left, sizeof(left)) != 0)
        return -1;
    return 0;
}

/* Seconds per unit of a Go duration; -1 for no such unit. */
static double unit_seconds(const char *unit, size_t len)
{
    static const struct {
        const char *name;
        double seconds;
    } units[] = {{"ns", 1e-9}, {"us", 1e-6}, {"\xc2\xb5s", 1e-6}, {"\xce\xbcs", 1e-6},
                 {"ms", 1e-3}, {"s", 1.0},   {"m", 60.0},           {"h", 3600.0}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (strlen(units[i].name) == len && strncmp(units[i].name, unit, len) == 0)
            return units[i].seconds;
    return -1.0;
}

/* A Go duration (30s, 1m30s, .5h, 0) in seconds; -1 if it is not one. As the Python client. */
static int go_duration(const char *s, double *out)
{
    double total = 0.0, sign = *s == '-' ? -1.0 : 1.0;
    if (*s == '+' || *s == '-')
        s++;
    if (strcmp(s, "0") == 0) {
        *out = 0.0;
        return 0;
    }
    if (*s == '\0')
        return -1;
    while (*s != '\0') {
        double value = 0.0, scale = 1.0, unit;
        int digits = 0;
        const char *start;
        while (*s >= '0' && *s <= '9') {
            value = value * 10 + (*s++ - '0');
            digits++;
        }
        if (*s == '.') {
            s++;
            while (*s >= '0' && *s <= '9') {
                scale /= 10;
                value += (*s++ - '0') * scale;
                digits++;
            }
        }
        if (digits == 0)
            return -1;
        start = s;
        while (*s != '\0' && *s != '.' && !(*s >= '0' && *s <= '9'))
            s++;
        unit = unit_seconds(start, (size_t)(s - start));
        if (unit < 0)
            return -1;
        total += value * unit;
    }
    *out = sign * total;
    return 0;
}

/*
 * WAL-G's client flags after the command's arguments (its cmd/daemonclient: Go's flag package,
 * one or two dashes, =VALUE or the next argument). Sets *timeout to -timeout's seconds (left
 * as it is when not given); -connection-timeout is checked and changes nothing, the one
 * deadline of the call covering the connect too. NULL, or what is wrong. As the Python client.
 */
static const char *client_flags(int n, char **args, double *timeout)
{
    static char problem[512];
    for (int i = 0; i < n; i++) {
        const char *arg = args[i], *name, *value, *eq;
        double seconds;
        int len;
        if (strcmp(arg, "--") == 0 && i == n - 1)
            break;
        if (arg[0] != '-' || strcmp(arg, "-") == 0 || strcmp(arg, "--") == 0) {
            snprintf(problem, sizeof(problem), "unexpected argument %.100s after the flags", arg);
            return problem;
        }
        name = arg + (arg[1] == '-' ? 2 : 1);
        eq = strchr(name, '=');
        len = (int)(eq != NULL ? (size_t)(eq - name) : strlen(name));
        if (!(len == 7 && strncmp(name, "timeout", 7) == 0) &&
            !(len == 18 && strncmp(name, "connection-timeout", 18) == 0)) {
            snprintf(problem, sizeof(problem), "flag provided but not defined: -%.*s",
                     len > 100 ? 100 : len, name);
            return problem;
        }
        if (eq != NULL) {
            value = eq + 1;
        } else if (i + 1 < n) {
            value = args[++i];
        } else {
            snprintf(problem, sizeof(problem), "flag needs an argument: -%.*s", len, name);
            return problem;
        }
        if (go_duration(value, &seconds) != 0 || !(seconds > 0) || seconds > 1e9) {
            snprintf(problem, sizeof(problem),
                     "invalid value \"%.100s\" for flag -%.*s: not a positive duration "
                     "(30s, 1m30s, 500ms)",
                     value, len, name);
            return problem;
        }
        if (len == 7)
            *timeout = seconds;
    }
    return NULL;
}

/*
 * WAL-G documents archive_command = 'walg-daemon-client SOCKET wal-push %f': a bare file name.
 * PostgreSQL runs the command in its data directory, where that file is pg_wal/NAME; sent as
 * the data directory's own NAME, the daemon refused it (not in its pg_wal), every call. A name
 * that is there as it stands (a call by hand from inside pg_wal) is left as it is, as is any
 * name that cannot be looked at. As walg.daemon_client._in_pg_wal.
 */
static char *in_pg_wal(char *name)
{
    static char buf[MAX_MESSAGE + 16];
    struct stat st;
    int n;
    if (name[0] == '\0' || strchr(name, '/') != NULL)
        return name;
    if (lstat(name, &st) == 0 || errno != ENOENT)
        return name;
    n = snprintf(buf, sizeof(buf), "pg_wal/%s", name);
    return n > 0 && (size_t)n < sizeof(buf) ? buf : name;
}

/* Runs `walg wal-fetch NAME DEST` or `walg wal-push PATH` in this process's place. */
static int direct(char **argv)
{
    if (fetch)
        execl(WALG_PATH, WALG_PATH, "wal-fetch", argv[3], argv[4], (char *)NULL);
    else
        execl(WALG_PATH, WALG_PATH, "wal-push", argv[3], (char *)NULL);
    fprintf(stderr, "walg-daemon-client: cannot run %s: %s\n", WALG_PATH, strerror(errno));
    return failed();
}

/*
 * The daemon closed the connection without answering (a restart, or it died): as if it had
 * not been there, but for a push too. Failing a fetch would stop recovery.
 */
static int gone(int fd, const char *path, const char *command, const char *reason, char **argv)
{
    (void)close(fd);
    if (strcmp(command, "check") == 0) {
        fprintf(stderr, "walg-daemon-client: %s: the daemon stopped before answering\n", path);
        return EXIT_FAILED;
    }
    fprintf(stderr,
            "walg-daemon-client: the daemon at %s stopped before answering (%s); running walg "
            "%s directly\n",
            path, reason, command);
    return direct(argv);
}

static int send_all(int fd, const unsigned char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0) {
            /* Stopped and continued (signal(7)): again, with what is left of the deadline. */
            if (errno == EINTR && time_left(fd) == 0)
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
    return err == EAGAIN || err == EWOULDBLOCK || err == EINPROGRESS || err == ETIMEDOUT
               ? "timed out"
               : strerror(err);
}

int main(int argc, char **argv)
{
    static struct message m;
    struct sockaddr_un addr;
    struct timeval tv;
    struct ucred cred;
    socklen_t cred_len = sizeof(cred);
    unsigned char reply;
    ssize_t got;
    int fd, built;
    double flag_timeout = 0.0; /* 0: no -timeout given */

    /*
     * A standard descriptor PostgreSQL's child was started without (closed) would be the
     * socket's number, and what is written to stderr would go to the daemon (or to the
     * untrusted listener told nothing was sent): /dev/null stands in for it.
     */
    for (int i = 0; i < 3; i++)
        if (fcntl(i, F_GETFD) < 0 && errno == EBADF && open("/dev/null", O_RDWR) < 0)
            break;
    /*
     * An empty SOCKET ("$WALG_SOCKET" unset in the server's environment) names no socket:
     * copied into sun_path it was the abstract address of 107 NUL bytes.
     */
    if (argc >= 3) {
        int wanted = strcmp(argv[2], "wal-push") == 0    ? 1
                     : strcmp(argv[2], "wal-fetch") == 0 ? 2
                     : strcmp(argv[2], "check") == 0     ? 0
                                                         : -1;
        if (wanted >= 0 && argc > 3 + wanted && argv[3 + wanted][0] == '-') {
            const char *problem = client_flags(argc - 3 - wanted, argv + 3 + wanted,
                                               &flag_timeout);
            if (problem != NULL) {
                fprintf(stderr, "walg-daemon-client: %s; nothing was done\n", problem);
                if (strcmp(argv[2], "wal-fetch") == 0 && in_archive_recovery("."))
                    return EXIT_ABORT_RECOVERY;
                return EXIT_USAGE;
            }
            argc = 3 + wanted;
        }
    }
    if (argc == 4 && strcmp(argv[2], "wal-push") == 0)
        argv[3] = in_pg_wal(argv[3]);
    if (argc < 3 || argv[1][0] == '\0' || (built = build(&m, argc, argv)) == -1) {
        fputs(usage, stderr);
        /*
         * A wal-fetch in a data directory in archive recovery (PostgreSQL runs restore_command
         * there): 2 would read as "not in the archive" ('... wal-fetch %f', no %p).
         */
        if (argc >= 3 && strcmp(argv[2], "wal-fetch") == 0 && in_archive_recovery("."))
            return EXIT_ABORT_RECOVERY;
        return EXIT_USAGE;
    }
    const char *path = argv[1], *command = argv[2];
    if (built != 0) {
        fprintf(stderr, "walg-daemon-client: %s: %s; nothing was done\n", command,
                strerror(errno));
        /* Without the absolute DEST, the relative one decides (it is relative to PGDATA). */
        if (fetch && target[0] == '\0' && strlen(argv[4]) < sizeof(target))
            memcpy(target, argv[4], strlen(argv[4]) + 1);
        return failed();
    }
    if (timeout_from_env(&tv, flag_timeout) != 0)
        return failed();
    if (strlen(path) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "walg-daemon-client: socket path %s is too long; nothing was done\n", path);
        return failed();
    }
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path, strlen(path));

    /* Blocking, with SO_SNDTIMEO: connect waits for room in a full listen queue that long. */
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || start_deadline(&tv) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0) {
        fprintf(stderr, "walg-daemon-client: no socket: %s; nothing was done\n", strerror(errno));
        return failed();
    }
    while (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        int err = errno;
        /*
         * A blocking socket call with a timeout fails with EINTR once the process is stopped
         * and continued (SIGSTOP, SIGTSTP; signal(7)). Called again, it would get the socket's
         * whole timeout once more: the timeout is set to what is left of the deadline first.
         */
        if (err == EINTR) {
            if (time_left(fd) == 0)
                continue;
            err = errno;
        }
        (void)close(fd);
        if (err == ENOENT || err == ECONNREFUSED) {
            if (fetch) {
                fprintf(stderr,
                        "walg-daemon-client: no daemon at %s (%s); fetching directly\n", path,
                        strerror(err));
                return direct(argv);
            }
            fprintf(stderr,
                    "walg-daemon-client: walg daemon is not running at %s (%s); nothing was "
                    "done\n",
                    path, strerror(err));
            return EXIT_FAILED;
        }
        if (err == EACCES || err == EPERM) {
            fprintf(stderr,
                    "walg-daemon-client: cannot connect to %s: %s (the socket, or a folder "
                    "above it, is another user's: run the daemon as the user PostgreSQL runs "
                    "as); nothing was sent\n",
                    path, strerror(err));
            return failed();
        }
        fprintf(stderr,
                "walg-daemon-client: talking to %s failed: %s; nothing is known to be done\n",
                path, why(err));
        return failed();
    }
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) != 0 ||
        cred_len != sizeof(cred)) {
        fprintf(stderr, "walg-daemon-client: %s: cannot tell who serves the socket (%s); "
                        "nothing was sent\n",
                path, strerror(errno));
        (void)close(fd);
        return failed();
    }
    if (cred.uid != geteuid() && cred.uid != 0) {
        fprintf(stderr,
                "walg-daemon-client: %s: the socket is served by uid %lu, neither this user "
                "nor root; nothing was sent\n",
                path, (unsigned long)cred.uid);
        (void)close(fd);
        return failed();
    }
    if (time_left(fd) != 0 || send_all(fd, m.data, m.len) != 0) {
        if (errno == EPIPE || errno == ECONNRESET)
            return gone(fd, path, command, strerror(errno), argv);
        fprintf(stderr,
                "walg-daemon-client: talking to %s failed: %s; nothing is known to be done\n",
                path, why(errno));
        (void)close(fd);
        return failed();
    }
    if (time_left(fd) != 0) {
        fprintf(stderr,
                "walg-daemon-client: talking to %s failed: %s; nothing is known to be done\n",
                path, why(errno));
        (void)close(fd);
        return failed();
    }
    while ((got = recv(fd, &reply, 1, 0)) < 0 && errno == EINTR && time_left(fd) == 0)
        ; /* stopped and continued: again, within what is left of the deadline */
    if (got == 0)
        return gone(fd, path, command, "closed without a reply", argv);
    if (got < 0 && errno == ECONNRESET)
        return gone(fd, path, command, strerror(errno), argv);
    if (got < 0) {
        fprintf(stderr,
                "walg-daemon-client: talking to %s failed: %s; nothing is known to be done\n",
                path, why(errno));
        (void)close(fd);
        return failed();
    }
    (void)close(fd);
    if (got == 1 && reply == 'O')
        return EXIT_DONE;
    if (got == 1 && reply == 'N')
        return EXIT_NOT_FOUND;
    if (got == 1 && reply == 'E')
        fprintf(stderr,
                "walg-daemon-client: %s failed: the daemon answered an error (see the daemon's "
                "log)\n",
                command);
    else
        fprintf(stderr, "walg-daemon-client: %s failed: the daemon answered no valid reply 0x%02x\n",
                command, reply);
    return failed();
}
