/*
 * vers-agent: the guest side of `vers exec`, `vers cp` and `vers connect`.
 *
 * One virtio-serial port (named "vers.agent") carries a multiplexed, framed protocol (the spec is
 * docs/guests.md, the host side vers/vmm/agent.py). Every frame is
 *
 *     [type u8][channel u32 LE][length u32 LE][payload: length bytes]
 *
 * The host opens channels; each runs one command (fork, setsid, exec), with pipes or a pty, and
 * streams its stdin, stdout and stderr as frames. Per-channel credit windows bound every buffer:
 * the agent reads a command's output only while the host has granted room for it, and the host
 * sends stdin only while the agent has granted room, so a slow reader stalls only its own channel
 * and the agent never needs the guest's disk or /tmp.
 *
 * The host may disconnect at any time (the vers process ended, the VM was restored or branched
 * into a new QEMU). The agent notices it by POLLHUP on the port, or by the host's next HELLO, and
 * then drops every channel (SIGTERM to its process group, SIGKILL two seconds later).
 *
 * For `vers cp` of a regular file into the guest the agent writes the file itself (FS "put"): the
 * bytes go from its port buffer straight into a temporary file next to the target, renamed into
 * place once complete, with no command, pipe or credit window in between.
 *
 * For `vers commit` the agent also flushes the guest's file systems (FS "sync") and freezes them
 * (FS "freeze"; FIFREEZE on each writable block file system, in reverse mount order) around the
 * moment the host captures the disks, then thaws them (FS "thaw"). A forked holder process keeps
 * the freeze and thaws by itself when the host asks, when the host goes away or starts over, when
 * the agent dies, or when the freeze has lasted longer than the host allowed: a guest never stays
 * frozen.
 *
 * Plain C99 + POSIX, linked statically: it runs in any x86_64 root whatever its libc.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <limits.h>
#include <mntent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PROTO_MAJOR 1
#define PROTO_MINOR 4

enum {
    F_NOP = 0, F_HELLO = 1, F_OPEN = 2, F_STDIN = 3, F_STDOUT = 4, F_STDERR = 5, F_EXIT = 6,
    F_SIGNAL = 7, F_RESIZE = 8, F_CREDIT = 9, F_CLOSE = 10, F_ERROR = 11, F_FS = 12,
    F_FS_DONE = 13, F_MAX = 13
};

#ifndef FIFREEZE
#define FIFREEZE _IOWR('X', 119, int)
#define FITHAW _IOWR('X', 120, int)
#endif

#define HDR 9
/* how long a session that just said HELLO outlives a port that still says "no host" */
#define CONNECT_GRACE_MS 500
#define WINDOW (1u << 20)           /* credit a channel starts with, each way */
#define MAX_IN_FRAME (256u << 10)   /* the host never sends a bigger payload */
#define OUT_CHUNK (64u << 10)       /* stdout/stderr frames carry at most this */
#define OUT_HIGH (512u << 10)       /* stop reading commands while this much waits for the port */
#define MAX_CHANNELS 64
#define KILL_GRACE_MS 2000
#define MAX_FREEZE_MS 60000     /* a host may not ask for a longer freeze than this */
#define MAX_FS 64
#define MAX_PUTS 8
/* a read of the port returns at most one 4 KiB virtio buffer; a readv of this many 4 KiB pieces
 * takes up to that many full buffers in one system call */
#define PORT_IOV 64
/* the least of a put's frame written before the frame is whole */
#define PUT_PART (64u << 10)
/* what a put holds in memory while the file systems are frozen (a write would block the agent,
 * and with it the thaw) */
#define PUT_FROZEN_MAX (64u << 20)

static const char MAGIC[] = "VERS-AGENT-HELLO/";

struct buf {
    unsigned char *p;
    size_t off, len, cap;
};

struct channel {
    int used;
    uint32_t id;
    pid_t pid;          /* 0 once reaped */
    int status;
    int in_fd, out_fd, err_fd;  /* -1 when closed; with a pty all three are the master */
    int pty;
    int stdin_eof;      /* the host sent STDIN EOF */
    struct buf in;      /* stdin waiting for the command */
    uint32_t out_credit;  /* bytes of output the host has room for */
    uint32_t in_done;   /* stdin bytes written since the last CREDIT */
};

struct dying {
    pid_t pgid;
    long long kill_at;
};

static int port = -1;
static int synced;           /* a HELLO was seen on the current host connection */
static long long hello_at;   /* when (now_ms) the last HELLO came */
static struct buf inbuf, outbuf;
static struct channel chans[MAX_CHANNELS];
static struct dying dying[MAX_CHANNELS * 2];
static int wake_pipe[2];

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_signal(int sig) {
    int saved = errno;
    char c = (char)sig;
    ssize_t r = write(wake_pipe[1], &c, 1);
    (void)r;
    errno = saved;
}

static void buf_reserve(struct buf *b, size_t more) {
    if (b->off && b->off + b->len + more > b->cap) {
        memmove(b->p, b->p + b->off, b->len);
        b->off = 0;
    }
    if (b->off + b->len + more > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        while (cap < b->off + b->len + more)
            cap *= 2;
        unsigned char *np = realloc(b->p, cap);
        if (!np) {
            fprintf(stderr, "vers-agent: out of memory\n");
            exit(1);
        }
        b->p = np;
        b->cap = cap;
    }
}

static void buf_append(struct buf *b, const void *data, size_t n) {
    buf_reserve(b, n);
    memcpy(b->p + b->off + b->len, data, n);
    b->len += n;
}

static void buf_consume(struct buf *b, size_t n) {
    b->off += n;
    b->len -= n;
    if (!b->len)
        b->off = 0;
}

static void buf_free(struct buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = v & 0xff; p[1] = (v >> 8) & 0xff; p[2] = (v >> 16) & 0xff; p[3] = (v >> 24) & 0xff;
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Appends a frame header; the caller appends exactly len payload bytes. */
static void frame_header(int type, uint32_t chan, uint32_t len) {
    unsigned char h[HDR];
    h[0] = (unsigned char)type;
    put_u32(h + 1, chan);
    put_u32(h + 5, len);
    buf_append(&outbuf, h, HDR);
}

static void send_frame(int type, uint32_t chan, const void *data, uint32_t len) {
    frame_header(type, chan, len);
    if (len)
        buf_append(&outbuf, data, len);
}

static void send_u32(int type, uint32_t chan, uint32_t v) {
    unsigned char p[4];
    put_u32(p, v);
    send_frame(type, chan, p, 4);
}

static void send_error(uint32_t chan, const char *msg) {
    send_frame(F_ERROR, chan, msg, (uint32_t)strlen(msg));
}

static struct channel *find_channel(uint32_t id) {
    for (int i = 0; i < MAX_CHANNELS; i++)
        if (chans[i].used && chans[i].id == id)
            return &chans[i];
    return NULL;
}

static void close_fd(int *fd) {
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void close_io(struct channel *c) {
    if (c->pty) {
        close_fd(&c->out_fd);
        c->in_fd = c->err_fd = -1;
    } else {
        close_fd(&c->in_fd);
        close_fd(&c->out_fd);
        close_fd(&c->err_fd);
    }
}

static void free_channel(struct channel *c) {
    close_io(c);
    buf_free(&c->in);
    memset(c, 0, sizeof *c);
    c->in_fd = c->out_fd = c->err_fd = -1;
}

/* The host is gone or started over: stop the command (TERM now, KILL after a grace period). */
static void drop_channel(struct channel *c) {
    if (c->pid > 0) {
        kill(-c->pid, SIGTERM);
        kill(-c->pid, SIGCONT);
        for (size_t i = 0; i < sizeof dying / sizeof dying[0]; i++) {
            if (!dying[i].pgid) {
                dying[i].pgid = c->pid;
                dying[i].kill_at = now_ms() + KILL_GRACE_MS;
                break;
            }
        }
    }
    free_channel(c);
}

static void drop_all(void) {
    for (int i = 0; i < MAX_CHANNELS; i++)
        if (chans[i].used)
            drop_channel(&chans[i]);
}

static int set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void fs_release(void);
static void drop_puts(void);
static void puts_thawed(void);

/* Drops every channel, any freeze, and what waits for the port; ``lost``: the host went away, so
 * what it sent last is stale too. */
static void reset_session(int lost) {
    drop_all();
    drop_puts();
    fs_release();
    outbuf.off = outbuf.len = 0;
    if (lost) {
        inbuf.off = inbuf.len = 0;
        synced = 0;
    }
}

/* -- sync, freeze and thaw (for file-consistent commits) --------------------------------------
 *
 * Each runs in a forked child, so the agent keeps serving its channels while the kernel flushes:
 * "sync" is a child calling sync(2); "freeze MS" forks a holder that freezes and then waits on a
 * control pipe for at most MS milliseconds. The holder thaws when a byte arrives (the host's
 * "thaw"), when the pipe closes (the host went away or started over, or the agent died), or when
 * the time is up, whichever comes first; only SIGKILL could stop it first, and it asks the OOM
 * killer to spare it. */

#define MAX_SYNCS 8

static struct {
    pid_t pid;
    uint32_t chan;
    int answer;  /* 0 once the host that asked is gone */
} syncs[MAX_SYNCS];

static struct {
    pid_t holder;           /* 0 when nothing is frozen */
    int ctl, rep;           /* our ends: writing to / closing ctl thaws; rep carries the report */
    uint32_t freeze_chan, thaw_chan;
    int freeze_pending;     /* the freeze's answer is not sent yet */
    int thaw_pending;       /* the host asked for the thaw and awaits its answer */
    int count;              /* file systems the holder froze */
    int expired;            /* the last freeze ended by its timeout, before the host's thaw */
} fz = {0, -1, -1, 0, 0, 0, 0, 0, 0};

static void fs_answer(uint32_t chan, const char *msg) {
    send_frame(F_FS_DONE, chan, msg, (uint32_t)strlen(msg));
}

/* Close fds lo..hi: one close_range(2) (Linux 5.9) where the kernel has it, not a system call per
 * fd (each one is costly in a TCG guest). */
static void close_between(int lo, int hi) {
    if (lo > hi)
        return;
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)lo, (unsigned)hi, 0u) == 0)
        return;
#endif
    for (int fd = lo; fd <= hi && fd < 1024; fd++)
        close(fd);
}

static void child_close_fds(int keep1, int keep2) {
    int a = keep1 < keep2 ? keep1 : keep2, b = keep1 < keep2 ? keep2 : keep1;
    int lo = 3;
    if (a >= lo) {
        close_between(lo, a - 1);
        lo = a + 1;
    }
    if (b >= lo) {
        close_between(lo, b - 1);
        lo = b + 1;
    }
    close_between(lo, INT_MAX);
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);
}

static void thaw_fds(const int *fds, int n) {
    for (int k = n - 1; k >= 0; k--) {  /* frozen last-mounted first: thawed in mount order */
        ioctl(fds[k], FITHAW, 0);
        close(fds[k]);
    }
}

static void holder_main(int ctl, int rep, int timeout_ms) {
    static char msg[4096];
    int fds[MAX_FS], nf = 0, n = 0;
    char *dirs[MAX_FS];
    dev_t devs[MAX_FS];
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    int oom = open("/proc/self/oom_score_adj", O_WRONLY);
    if (oom >= 0) {
        ssize_t w = write(oom, "-1000", 5);
        (void)w;
        close(oom);
    }
    /* every writable, block-device-backed file system, once each (bind mounts share a device) */
    FILE *f = setmntent("/proc/self/mounts", "r");
    struct mntent *m;
    while (f && n < MAX_FS && (m = getmntent(f))) {
        struct stat st;
        if (strncmp(m->mnt_fsname, "/dev/", 5) || hasmntopt(m, "ro"))
            continue;
        if (stat(m->mnt_dir, &st) < 0 || !major(st.st_dev))
            continue;
        int seen = 0;
        for (int i = 0; i < n; i++)
            seen |= devs[i] == st.st_dev;
        if (seen)
            continue;
        devs[n] = st.st_dev;
        dirs[n++] = strdup(m->mnt_dir);
    }
    if (f)
        endmntent(f);
    size_t len = (size_t)snprintf(msg, sizeof msg, "ok ");
    char names[3000] = "";
    for (int i = n - 1; i >= 0; i--) {  /* reverse mount order: a mount before what it holds */
        int fd = open(dirs[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0 || ioctl(fd, FIFREEZE, 0) < 0) {
            int e = errno;
            if (fd >= 0)
                close(fd);
            if (e == EOPNOTSUPP || e == EBUSY)
                continue;  /* cannot freeze, or another freezer holds it: not ours to thaw */
            thaw_fds(fds, nf);
            len = (size_t)snprintf(msg, sizeof msg, "error cannot freeze %s: %s", dirs[i],
                                   strerror(e));
            ssize_t w = write(rep, msg, len);
            (void)w;
            _exit(1);
        }
        fds[nf++] = fd;
        if (strlen(names) + strlen(dirs[i]) + 2 < sizeof names) {
            strcat(names, " ");
            strcat(names, dirs[i]);
        }
    }
    len += (size_t)snprintf(msg + len, sizeof msg - len, "%d%s", nf, names);
    ssize_t w = write(rep, msg, len < sizeof msg ? len : sizeof msg - 1);
    (void)w;
    close(rep);
    long long end = now_ms() + timeout_ms;
    int expired = 0;
    struct pollfd p = {.fd = ctl, .events = POLLIN};
    for (;;) {
        long long left = end - now_ms();
        if (left <= 0) {
            expired = 1;
            break;
        }
        int r = poll(&p, 1, (int)left);
        if (r > 0 || (r < 0 && errno != EINTR))
            break;  /* the host's thaw, or the agent gone */
    }
    thaw_fds(fds, nf);
    _exit(expired ? 2 : 0);
}

static void fs_freeze(uint32_t chan, int timeout_ms) {
    if (fz.holder) {
        fs_answer(chan, "error the file systems are frozen already");
        return;
    }
    if (timeout_ms <= 0 || timeout_ms > MAX_FREEZE_MS)
        timeout_ms = MAX_FREEZE_MS;
    int ctl[2], rep[2];
    if (pipe(ctl) < 0)
        goto fail;
    if (pipe(rep) < 0) {
        close(ctl[0]);
        close(ctl[1]);
        goto fail;
    }
    pid_t pid = fork();
    if (pid == 0) {
        child_close_fds(ctl[0], rep[1]);
        holder_main(ctl[0], rep[1], timeout_ms);
    }
    close(ctl[0]);
    close(rep[1]);
    if (pid < 0) {
        close(ctl[1]);
        close(rep[0]);
        goto fail;
    }
    fcntl(ctl[1], F_SETFD, FD_CLOEXEC);
    fcntl(rep[0], F_SETFD, FD_CLOEXEC);
    set_nonblock(rep[0]);
    fz.holder = pid;
    fz.ctl = ctl[1];
    fz.rep = rep[0];
    fz.freeze_chan = chan;
    fz.freeze_pending = 1;
    fz.thaw_pending = 0;
    fz.count = 0;
    fz.expired = 0;
    return;
fail:
    fs_answer(chan, "error cannot start the freeze");
}

/* The holder's report (or its end): answers the freeze. */
static void fs_read_report(void) {
    if (fz.rep < 0)
        return;
    char msg[4096];
    ssize_t r = read(fz.rep, msg, sizeof msg - 1);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    close_fd(&fz.rep);
    if (r > 0) {
        msg[r] = 0;
        if (!strncmp(msg, "ok ", 3))
            fz.count = atoi(msg + 3);
    } else {
        snprintf(msg, sizeof msg, "error the freeze ended before it was reported");
    }
    if (fz.freeze_pending)
        fs_answer(fz.freeze_chan, msg);
    fz.freeze_pending = 0;
}

static void fs_thaw(uint32_t chan) {
    if (!fz.holder) {
        fs_answer(chan, fz.expired ? "ok 0 expired" : "ok 0 not frozen");
        fz.expired = 0;
        return;
    }
    if (fz.ctl >= 0) {
        ssize_t w = write(fz.ctl, "t", 1);
        (void)w;
        close_fd(&fz.ctl);
    }
    fz.thaw_chan = chan;
    fz.thaw_pending = 1;
}

/* The holder exited: it has thawed. */
static void fs_holder_done(int status) {
    fs_read_report();
    int expired = WIFEXITED(status) && WEXITSTATUS(status) == 2;
    if (fz.thaw_pending) {
        char msg[64];
        snprintf(msg, sizeof msg, expired ? "ok 0 expired" : "ok %d thawed", fz.count);
        fs_answer(fz.thaw_chan, msg);
    } else {
        fz.expired = expired;
    }
    close_fd(&fz.ctl);
    fz.holder = 0;
    fz.thaw_pending = 0;
    puts_thawed();
}

/* The host that asked is gone: thaw now, and answer nobody. */
static void fs_release(void) {
    close_fd(&fz.ctl);
    fz.freeze_pending = fz.thaw_pending = fz.expired = 0;
    for (int i = 0; i < MAX_SYNCS; i++)
        syncs[i].answer = 0;
}

static void fs_sync(uint32_t chan) {
    for (int i = 0; i < MAX_SYNCS; i++) {
        if (syncs[i].pid)
            continue;
        pid_t pid = fork();
        if (pid == 0) {
            child_close_fds(-1, -1);
            sync();
            _exit(0);
        }
        if (pid < 0)
            break;
        syncs[i].pid = pid;
        syncs[i].chan = chan;
        syncs[i].answer = 1;
        return;
    }
    fs_answer(chan, "error cannot start sync");
}

/* Parse "SEC[.USEC]" (microseconds: up to six digits); 0 on success. */
static int parse_time(const char *arg, struct timespec *ts, const char **rest) {
    char *end;
    long long sec = strtoll(arg, &end, 10);
    long usec = 0;
    if (end == arg || sec <= 0)
        return -1;
    if (*end == '.') {
        char digits[7] = "000000";
        const char *p = end + 1;
        int i = 0;
        for (; i < 6 && p[i] >= '0' && p[i] <= '9'; i++)
            digits[i] = p[i];
        usec = strtol(digits, NULL, 10);
        for (end = (char *)p + i; *end >= '0' && *end <= '9'; end++)
            ;
    }
    ts->tv_sec = (time_t)sec;
    ts->tv_nsec = usec * 1000;
    if (rest)
        *rest = end;
    return 0;
}

/* "clock SEC.USEC": step the wall clock to the host's time, sent the moment before (protocol
 * 1.2; `date -s` takes whole seconds only). */
static void set_clock(uint32_t chan, const char *arg) {
    struct timespec ts;
    if (parse_time(arg, &ts, NULL) < 0) {
        fs_answer(chan, "error bad time");
        return;
    }
    if (clock_settime(CLOCK_REALTIME, &ts) < 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "error clock_settime: %s", strerror(errno));
        fs_answer(chan, msg);
        return;
    }
    fs_answer(chan, "ok 0 set");
}

#define RUN_DIR "/run/vers"
#define GENERATION RUN_DIR "/generation"
#define RNDADDENTROPY_REQ 0x40085203UL /* _IOW('R', 0x03, int[2]), linux/random.h */
#define RNDRESEEDCRNG_REQ 0x5207UL     /* _IO('R', 0x07) */
#define FRESH_ENTROPY 64

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void fresh_fail(uint32_t chan, const char *step, const char *what) {
    char msg[256];
    snprintf(msg, sizeof msg, "error %s: %s: %s", step, what, strerror(errno));
    fs_answer(chan, msg);
}

/* "fresh SEC.USEC FIRST VMID HEX" (protocol 1.4): make a clone a machine of its own in one
 * request, with no process started in the guest: step the wall clock, credit the host's entropy
 * (HEX: 64 bytes) to the kernel's pool and reseed its generator (RNDADDENTROPY, RNDRESEEDCRNG),
 * and write the generation marker "VMID N" (N = 0 when FIRST is 1, else the marker's count plus
 * one), renamed into place. The answer: "ok N" or "error STEP: ...". */
static void fresh_request(uint32_t chan, const char *arg) {
    struct timespec ts;
    const char *p;
    if (parse_time(arg, &ts, &p) < 0 || *p != ' ') {
        fs_answer(chan, "error bad request");
        return;
    }
    int first = p[1] == '1';
    if ((p[1] != '0' && p[1] != '1') || p[2] != ' ') {
        fs_answer(chan, "error bad request");
        return;
    }
    p += 3;
    char vm_id[65];
    size_t n = 0;
    while (p[n] && p[n] != ' ' && n < sizeof vm_id - 1) {
        char c = p[n];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              c == '-' || c == '_')) {
            fs_answer(chan, "error bad request");
            return;
        }
        vm_id[n] = c;
        n++;
    }
    vm_id[n] = 0;
    if (!n || p[n] != ' ') {
        fs_answer(chan, "error bad request");
        return;
    }
    p += n + 1;
    struct { int entropy_count; int buf_size; unsigned char buf[FRESH_ENTROPY]; } pool;
    for (int i = 0; i < FRESH_ENTROPY; i++) {
        int hi = hexval(p[2 * i]), lo = hi < 0 ? -1 : hexval(p[2 * i + 1]);
        if (lo < 0) {
            fs_answer(chan, "error bad request");
            return;
        }
        pool.buf[i] = (unsigned char)(hi << 4 | lo);
    }
    pool.entropy_count = FRESH_ENTROPY * 8;
    pool.buf_size = FRESH_ENTROPY;

    if (clock_settime(CLOCK_REALTIME, &ts) < 0)
        { fresh_fail(chan, "setting the clock", "clock_settime"); return; }
    int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        { fresh_fail(chan, "adding host entropy and reseeding", "/dev/urandom"); return; }
    if (ioctl(fd, RNDADDENTROPY_REQ, &pool) < 0 || ioctl(fd, RNDRESEEDCRNG_REQ) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        fresh_fail(chan, "adding host entropy and reseeding", "ioctl");
        return;
    }
    close(fd);
    memset(&pool, 0, sizeof pool);

    long gen = 0;
    if (!first) {
        char line[160] = "";
        fd = open(GENERATION, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t got = read(fd, line, sizeof line - 1);
            close(fd);
            line[got > 0 ? got : 0] = 0;
            char *sp = strchr(line, ' ');
            if (sp)
                gen = strtol(sp + 1, NULL, 10);
        }
        gen++;
    }
    if (mkdir(RUN_DIR, 0755) < 0 && errno != EEXIST)
        { fresh_fail(chan, "writing the generation marker", RUN_DIR); return; }
    char text[96];
    int len = snprintf(text, sizeof text, "%s %ld\n", vm_id, gen);
    fd = open(GENERATION ".new", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        { fresh_fail(chan, "writing the generation marker", GENERATION ".new"); return; }
    errno = 0;
    if (write(fd, text, (size_t)len) != len || close(fd) < 0 ||
        rename(GENERATION ".new", GENERATION) < 0) {
        int e = errno ? errno : EIO;
        unlink(GENERATION ".new");
        errno = e;
        fresh_fail(chan, "writing the generation marker", GENERATION);
        return;
    }
    char msg[32];
    snprintf(msg, sizeof msg, "ok %ld", gen);
    fs_answer(chan, msg);
}


/* -- files written by the agent itself (protocol 1.3) ------------------------------------------
 *
 * FS "put" takes one regular file: the request names the target, its mode, mtime and size; the
 * file's bytes follow as STDIN frames on the same channel, then an empty STDIN frame. The agent
 * writes them straight from its port buffer into a temporary file next to the target (created
 * O_EXCL, mode 0600 until it is complete), then sets the mode and mtime, fsyncs if asked, and
 * renames it into place. Any failure (no space, a short stream, the host gone, CLOSE) removes the
 * temporary file: nothing partial ever appears under the target name. While a freeze is held (or
 * about to be) the bytes wait in memory instead: a write to a frozen file system would block the
 * agent, which then could not read the host's thaw. */

static struct put {
    int used;
    uint32_t chan;
    int fd;
    char *tmp, *target;
    unsigned long long size, got;
    mode_t mode;
    struct timespec mtime;
    int sync;
    int created;        /* u->tmp exists (until renamed) */
    int ended;          /* the host's empty STDIN frame came; finish once nothing waits */
    struct buf held;    /* bytes that came while frozen */
} uploads[MAX_PUTS];

static struct put *find_put(uint32_t chan) {
    for (int i = 0; i < MAX_PUTS; i++)
        if (uploads[i].used && uploads[i].chan == chan)
            return &uploads[i];
    return NULL;
}

static void put_free(struct put *u, int remove_tmp) {
    if (u->fd >= 0)
        close(u->fd);
    if (remove_tmp && u->tmp && u->created)
        unlink(u->tmp);
    free(u->tmp);
    free(u->target);
    buf_free(&u->held);
    memset(u, 0, sizeof *u);
    u->fd = -1;
}

static void drop_puts(void) {
    for (int i = 0; i < MAX_PUTS; i++)
        if (uploads[i].used)
            put_free(&uploads[i], 1);
}

/* The symbolic name the host maps to an error of its own (see vers/vmm/agent.py). */
static const char *errno_name(int e) {
    switch (e) {
    case ENOENT: return "ENOENT";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case ENOSPC: return "ENOSPC";
    case EDQUOT: return "EDQUOT";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EROFS: return "EROFS";
    case EIO: return "EIO";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case EPROTO: return "EPROTO";
    case EBUSY: return "EBUSY";
    default: return "EOTHER";
    }
}

/* Answers "error ENAME WHAT: strerror" on ``chan`` for ``e``. */
static void put_error(uint32_t chan, int e, const char *what, const char *path) {
    char msg[PATH_MAX + 256];
    snprintf(msg, sizeof msg, "error %s %s%s%s: %s", errno_name(e), what, *what ? " " : "",
             path, strerror(e));
    fs_answer(chan, msg);
}

static void put_fail(struct put *u, int e, const char *what) {
    put_error(u->chan, e, what, u->target);
    put_free(u, 1);
}

/* Creates the temporary file (u->tmp is its template); 0, or -1 once the put failed. */
static int put_open(struct put *u) {
    u->fd = mkostemp(u->tmp, O_CLOEXEC);  /* O_CREAT | O_EXCL, mode 0600 */
    u->created = u->fd >= 0;
    if (u->fd < 0) {
        int e = errno;
        char *slash = strrchr(u->tmp, '/');
        *slash = 0;
        put_error(u->chan, e, "cannot create a file in", slash == u->tmp ? "/" : u->tmp);
        put_free(u, 0);
        return -1;
    }
    return 0;
}

/* Payload after "put\0": NUL-terminated "key=value" entries: path= (the target, absolute),
 * name= (the file's name, used when path is a directory), mode= (octal), mtime=SEC.NSEC, size=,
 * fsync=0|1. */
static void put_start(uint32_t chan, unsigned char *p, uint32_t len) {
    const char *path = NULL, *name = "";
    mode_t mode = 0644;
    struct timespec mtime = {0, UTIME_NOW};
    unsigned long long size = 0;
    int sync = 0;
    if (find_put(chan)) {
        fs_answer(chan, "error EOTHER a put on this channel is under way");
        return;
    }
    if (!len || p[len - 1] != 0) {
        fs_answer(chan, "error EOTHER malformed put request");
        return;
    }
    for (uint32_t i = 0; i < len;) {
        char *kv = (char *)p + i;
        i += (uint32_t)strlen(kv) + 1;
        if (!strncmp(kv, "path=", 5))
            path = kv + 5;
        else if (!strncmp(kv, "name=", 5))
            name = kv + 5;
        else if (!strncmp(kv, "mode=", 5))
            mode = (mode_t)strtoul(kv + 5, NULL, 8) & 07777;
        else if (!strncmp(kv, "mtime=", 6)) {
            char *end;
            mtime.tv_sec = (time_t)strtoll(kv + 6, &end, 10);
            mtime.tv_nsec = *end == '.' ? strtol(end + 1, NULL, 10) : 0;
            if (mtime.tv_nsec < 0 || mtime.tv_nsec > 999999999)
                mtime.tv_nsec = 0;
        } else if (!strncmp(kv, "size=", 5))
            size = strtoull(kv + 5, NULL, 10);
        else if (!strncmp(kv, "fsync=", 6))
            sync = atoi(kv + 6);
    }
    if (!path || path[0] != '/') {
        fs_answer(chan, "error EOTHER put needs an absolute path");
        return;
    }
    struct put *u = NULL;
    for (int i = 0; i < MAX_PUTS && !u; i++)
        if (!uploads[i].used)
            u = &uploads[i];
    if (!u) {
        fs_answer(chan, "error EOTHER too many files being put at once");
        return;
    }
    /* a directory (not a symlink to one) receives the file under its name */
    char target[PATH_MAX], dir[PATH_MAX];
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (!*name || strchr(name, '/')) {
            put_error(chan, EISDIR, "", path);
            return;
        }
        if ((size_t)snprintf(target, sizeof target, "%s%s%s", path,
                             path[strlen(path) - 1] == '/' ? "" : "/", name) >= sizeof target) {
            put_error(chan, ENAMETOOLONG, "", path);
            return;
        }
        snprintf(dir, sizeof dir, "%s", path);
    } else {
        if ((size_t)snprintf(target, sizeof target, "%s", path) >= sizeof target) {
            put_error(chan, ENAMETOOLONG, "", path);
            return;
        }
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash == dir)
            dir[1] = 0;
        else
            *slash = 0;
        if (stat(dir, &st) < 0) {
            put_error(chan, errno, "", dir);
            return;
        }
        if (!S_ISDIR(st.st_mode)) {
            put_error(chan, ENOTDIR, "", dir);
            return;
        }
    }
    if (lstat(target, &st) == 0 && S_ISDIR(st.st_mode)) {
        put_error(chan, EISDIR, "", target);
        return;
    }
    char tmp[PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s%s.vers-tmp-XXXXXX", dir,
                         dir[strlen(dir) - 1] == '/' ? "" : "/") >= sizeof tmp) {
        put_error(chan, ENAMETOOLONG, "", dir);
        return;
    }
    memset(u, 0, sizeof *u);
    u->used = 1;
    u->chan = chan;
    u->fd = -1;
    u->tmp = strdup(tmp);
    u->target = strdup(target);
    u->size = size;
    u->mode = mode;
    u->mtime = mtime;
    u->sync = sync;
    if (!u->tmp || !u->target) {
        fs_answer(chan, "error EOTHER out of memory");
        put_free(u, 0);
        return;
    }
    if (!fz.holder)  /* else once the freeze is over */
        put_open(u);
}

/* Writes all of p; 0, or -1 once the put failed (answered and freed). */
static int put_write(struct put *u, const unsigned char *p, size_t len) {
    while (len) {
        ssize_t w = write(u->fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            put_fail(u, w < 0 ? errno : ENOSPC, "cannot write");
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static void put_finish(struct put *u);

static void put_data(struct put *u, const unsigned char *p, uint32_t len) {
    if (u->got + len > u->size) {
        put_fail(u, EPROTO, "more bytes than announced for");
        return;
    }
    u->got += len;
    if (fz.holder || u->held.len) {
        if (u->held.len + len > PUT_FROZEN_MAX) {
            put_fail(u, EBUSY, "the file systems stayed frozen while writing");
            return;
        }
        buf_append(&u->held, p, len);
        return;
    }
    put_write(u, p, len);
}

static void put_end(struct put *u) {
    u->ended = 1;
    if (!fz.holder && !u->held.len)
        put_finish(u);
}

/* The freeze is over: what waited is written, and puts that ended are finished. */
static void puts_thawed(void) {
    for (int i = 0; i < MAX_PUTS; i++) {
        struct put *u = &uploads[i];
        if (!u->used || (u->fd < 0 && put_open(u) < 0))
            continue;
        if (u->held.len) {
            if (put_write(u, u->held.p + u->held.off, u->held.len) < 0)
                continue;
            buf_free(&u->held);
        }
        if (u->ended)
            put_finish(u);
    }
}

static void put_finish(struct put *u) {
    if (fz.holder) {  /* a freeze came since: finish once it is over */
        u->ended = 1;
        return;
    }
    if (u->got != u->size) {
        put_fail(u, EPROTO, "the stream ended short of the announced size for");
        return;
    }
    struct timespec times[2] = {u->mtime, u->mtime};
    if (fchmod(u->fd, u->mode) < 0) {
        put_fail(u, errno, "cannot set the mode of");
        return;
    }
    if (futimens(u->fd, times) < 0) {
        put_fail(u, errno, "cannot set the mtime of");
        return;
    }
    if (u->sync && fsync(u->fd) < 0) {
        put_fail(u, errno, "cannot fsync");
        return;
    }
    int fd = u->fd;
    u->fd = -1;
    if (close(fd) < 0) {
        put_fail(u, errno, "cannot write");
        return;
    }
    if (rename(u->tmp, u->target) < 0) {
        put_fail(u, errno, "cannot rename into place");
        return;
    }
    if (u->sync) {  /* the rename itself, durable */
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", u->target);
        char *slash = strrchr(dir, '/');
        if (slash == dir)
            dir[1] = 0;
        else if (slash)
            *slash = 0;
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    char msg[64];
    snprintf(msg, sizeof msg, "ok %llu put", u->got);
    fs_answer(u->chan, msg);
    put_free(u, 0);
}

/* Payload: "sync", "freeze MS", "thaw", "clock SEC.USEC", "fresh ..." or "put\0" and its
 * entries; the answer is an FS_DONE frame on the same channel: "ok COUNT [DETAIL]" or
 * "error MESSAGE". */
static void fs_request(uint32_t chan, unsigned char *p, uint32_t len) {
    if (len >= 4 && !memcmp(p, "put", 4)) {
        put_start(chan, p + 4, len - 4);
        return;
    }
    char req[320];
    size_t n = len < sizeof req - 1 ? len : sizeof req - 1;
    memcpy(req, p, n);
    req[n] = 0;
    if (!strcmp(req, "sync"))
        fs_sync(chan);
    else if (!strncmp(req, "freeze ", 7))
        fs_freeze(chan, atoi(req + 7));
    else if (!strcmp(req, "thaw"))
        fs_thaw(chan);
    else if (!strncmp(req, "clock ", 6))
        set_clock(chan, req + 6);
    else if (!strncmp(req, "fresh ", 6))
        fresh_request(chan, req + 6);
    else
        fs_answer(chan, "error unknown request");
}

/* Returns 1 if ``pid`` was one of ours (a sync or the freeze holder). */
static int fs_reaped(pid_t pid, int status) {
    if (fz.holder && pid == fz.holder) {
        fs_holder_done(status);
        return 1;
    }
    for (int i = 0; i < MAX_SYNCS; i++)
        if (syncs[i].pid == pid) {
            if (syncs[i].answer)
                fs_answer(syncs[i].chan, "ok 0 synced");
            memset(&syncs[i], 0, sizeof syncs[i]);
            return 1;
        }
    return 0;
}

/* -- opening a channel ------------------------------------------------------------------- */

struct open_req {
    char **argv;
    int argc;
    char **env;
    int envc;
    const char *cwd;
    int pty, want_stdin;
    unsigned rows, cols;
};

/* Payload: NUL-terminated "key=value" entries: argv= (repeated, in order), env=K=V (repeated),
 * cwd=, pty=0|1, rows=, cols=, stdin=0|1. */
static int parse_open(unsigned char *p, uint32_t len, struct open_req *r) {
    memset(r, 0, sizeof *r);
    r->cwd = NULL;
    r->want_stdin = 1;
    r->rows = 24;
    r->cols = 80;
    if (!len || p[len - 1] != 0)
        return -1;
    int n = 0;
    for (uint32_t i = 0; i < len; i++)
        n += p[i] == 0;
    r->argv = calloc((size_t)n + 1, sizeof(char *));
    r->env = calloc((size_t)n + 1, sizeof(char *));
    if (!r->argv || !r->env)
        return -1;
    for (uint32_t i = 0; i < len;) {
        char *kv = (char *)p + i;
        i += (uint32_t)strlen(kv) + 1;
        if (!strncmp(kv, "argv=", 5))
            r->argv[r->argc++] = kv + 5;
        else if (!strncmp(kv, "env=", 4))
            r->env[r->envc++] = kv + 4;
        else if (!strncmp(kv, "cwd=", 4))
            r->cwd = kv + 4;
        else if (!strncmp(kv, "pty=", 4))
            r->pty = atoi(kv + 4);
        else if (!strncmp(kv, "stdin=", 6))
            r->want_stdin = atoi(kv + 6);
        else if (!strncmp(kv, "rows=", 5))
            r->rows = (unsigned)atoi(kv + 5);
        else if (!strncmp(kv, "cols=", 5))
            r->cols = (unsigned)atoi(kv + 5);
    }
    return r->argc ? 0 : -1;
}

static void child_fail(const char *what, const char *arg, int code) {
    char msg[512];
    int n = snprintf(msg, sizeof msg, "vers-agent: %s %s: %s\n", what, arg, strerror(errno));
    ssize_t w = write(2, msg, n > 0 ? (size_t)n : 0);
    (void)w;
    _exit(code);
}

extern char **environ;

/* The command's environment: the agent's, with the request's K=V entries replacing or added.
 * Built before vfork, since the child shares the agent's memory until it execs. */
static char **build_env(struct open_req *r) {
    int n = 0;
    while (environ[n])
        n++;
    char **envp = calloc((size_t)(n + r->envc + 1), sizeof *envp);
    if (!envp)
        return NULL;
    memcpy(envp, environ, (size_t)n * sizeof *envp);
    for (int i = 0; i < r->envc; i++) {
        const char *eq = strchr(r->env[i], '=');
        size_t klen = eq ? (size_t)(eq - r->env[i]) + 1 : strlen(r->env[i]);
        int j = 0;
        while (j < n && strncmp(envp[j], r->env[i], klen))
            j++;
        envp[j] = r->env[i];
        if (j == n)
            n++;
    }
    envp[n] = NULL;
    return envp;
}

/* Runs in a vfork child: it shares the agent's memory until execve, so it makes system calls
 * only (and writes nothing the agent reads). All signals are blocked across vfork, so no handler
 * of the agent's runs here. */
static void child_exec(struct open_req *r, char **envp, int fd_in, int fd_out, int fd_err,
                       const char *slave) {
    /* every signal back to its default: the agent was started in the background by the guest
     * init, which leaves SIGINT and SIGQUIT ignored, and a shell on a pty must see Ctrl-C */
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    setsid();
    if (slave) {
        int s = open(slave, O_RDWR);
        if (s < 0)
            _exit(126);
        ioctl(s, TIOCSCTTY, 0);
        fd_in = fd_out = fd_err = s;
    }
    if (dup2(fd_in, 0) < 0 || dup2(fd_out, 1) < 0 || dup2(fd_err, 2) < 0)
        _exit(126);
    close_between(3, INT_MAX);
    if (r->cwd && chdir(r->cwd) < 0)
        child_fail("cannot change directory to", r->cwd, 126);
    if (!r->cwd && chdir("/root") < 0 && chdir("/") < 0)
        _exit(126);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execvpe(r->argv[0], r->argv, envp);
    child_fail("cannot run", r->argv[0], errno == ENOENT ? 127 : 126);
}

static void open_channel(uint32_t id, unsigned char *p, uint32_t len) {
    struct open_req r;
    struct channel *c = NULL;
    if (find_channel(id)) {
        send_error(id, "channel already open");
        return;
    }
    for (int i = 0; i < MAX_CHANNELS && !c; i++)
        if (!chans[i].used)
            c = &chans[i];
    if (!c) {
        send_error(id, "too many channels open");
        return;
    }
    if (parse_open(p, len, &r) < 0) {
        send_error(id, "malformed OPEN request");
        goto out;
    }
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, master = -1;
    char *slave = NULL;
    if (r.pty) {
        master = posix_openpt(O_RDWR | O_NOCTTY);
        if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0 ||
            !(slave = ptsname(master))) {
            send_error(id, "cannot allocate a pty");
            close_fd(&master);
            goto out;
        }
        struct winsize ws = {.ws_row = (unsigned short)r.rows, .ws_col = (unsigned short)r.cols};
        ioctl(master, TIOCSWINSZ, &ws);
    } else {
        if (pipe(out) < 0 || pipe(err) < 0 ||
            (r.want_stdin ? pipe(in) : ((in[0] = open("/dev/null", O_RDONLY)) < 0 ? -1 : 0)) < 0) {
            send_error(id, "cannot create pipes");
            goto fail_pipes;
        }
    }
    char **envp = build_env(&r);
    if (!envp) {
        send_error(id, "out of memory");
        close_fd(&master);
        goto fail_pipes;
    }
    /* vfork: no copy of the agent's page tables and no copy-on-write faults after it, which
     * in a TCG guest is ~5 ms of every exec */
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid_t pid = vfork();
    if (pid == 0)
        child_exec(&r, envp, in[0], out[1], err[1], slave);
    int fork_errno = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    free(envp);
    if (pid < 0) {
        errno = fork_errno;
        send_error(id, "fork failed");
        close_fd(&master);
        goto fail_pipes;
    }
    memset(c, 0, sizeof *c);
    c->used = 1;
    c->id = id;
    c->pid = pid;
    c->out_credit = WINDOW;
    if (r.pty) {
        c->pty = 1;
        c->in_fd = c->out_fd = c->err_fd = master;
        set_nonblock(master);
        c->err_fd = -1;
    } else {
        close(in[0]);
        close(out[1]);
        close(err[1]);
        c->in_fd = in[1];
        c->out_fd = out[0];
        c->err_fd = err[0];
        set_nonblock(out[0]);
        set_nonblock(err[0]);
        if (c->in_fd >= 0)
            set_nonblock(c->in_fd);
        else
            c->stdin_eof = 1;
    }
    goto out;
fail_pipes:
    for (int i = 0; i < 2; i++) {
        close_fd(&in[i]);
        close_fd(&out[i]);
        close_fd(&err[i]);
    }
out:
    free(r.argv);
    free(r.env);
}

/* -- frames from the host ---------------------------------------------------------------- */

static void hello(void) {
    reset_session(0);
    synced = 1;
    hello_at = now_ms();
    char msg[64];
    int n = snprintf(msg, sizeof msg, "%s%d.%d\n", MAGIC, PROTO_MAJOR, PROTO_MINOR);
    send_frame(F_HELLO, 0, msg, (uint32_t)n);
}

static void host_frame(int type, uint32_t id, unsigned char *p, uint32_t len) {
    struct channel *c = type == F_OPEN || type == F_NOP || type == F_FS ? NULL
                                                                     : find_channel(id);
    switch (type) {
    case F_NOP:
        return;
    case F_OPEN:
        open_channel(id, p, len);
        return;
    case F_FS:
        fs_request(id, p, len);
        return;
    default:
        break;
    }
    if (!c) {
        struct put *u = type == F_STDIN || type == F_CLOSE ? find_put(id) : NULL;
        if (u && type == F_STDIN && len)
            put_data(u, p, len);
        else if (u && type == F_STDIN)
            put_end(u);
        else if (u)
            put_free(u, 1);  /* CLOSE: the host gave up on it */
        return;  /* a channel that already ended: the host learns that from its EXIT */
    }
    switch (type) {
    case F_STDIN:
        if (!len)
            c->stdin_eof = 1;
        else if (c->in_fd >= 0)
            buf_append(&c->in, p, len);
        break;
    case F_SIGNAL:
        if (len >= 4 && c->pid > 0)
            kill(-c->pid, (int)get_u32(p));
        break;
    case F_RESIZE:
        if (len >= 4 && c->pty) {
            struct winsize ws = {.ws_row = (unsigned short)(p[0] | p[1] << 8),
                                 .ws_col = (unsigned short)(p[2] | p[3] << 8)};
            ioctl(c->out_fd, TIOCSWINSZ, &ws);
        }
        break;
    case F_CREDIT:
        if (len >= 4)
            c->out_credit += get_u32(p);
        break;
    case F_CLOSE:
        drop_channel(c);
        break;
    }
}

/* Parses complete frames out of inbuf. Until the connection's HELLO, and after anything that
 * cannot be a frame, only the HELLO magic is looked for: stale bytes of an earlier connection (a
 * frame cut short when its vers process died) are skipped, never taken as commands. */
static void parse_input(void) {
    for (;;) {
        unsigned char *p = inbuf.p + inbuf.off;
        size_t n = inbuf.len;
        if (!synced) {
            unsigned char *m = memmem(p, n, MAGIC, sizeof MAGIC - 1);
            if (!m) {
                size_t keep = sizeof MAGIC - 2;
                if (n > keep)
                    buf_consume(&inbuf, n - keep);
                return;
            }
            unsigned char *nl = memchr(m, '\n', n - (size_t)(m - p));
            if (!nl)
                return;
            buf_consume(&inbuf, (size_t)(nl + 1 - p));
            hello();
            continue;
        }
        if (n < HDR)
            return;
        int type = p[0];
        uint32_t id = get_u32(p + 1), len = get_u32(p + 5);
        if (type > F_MAX || len > MAX_IN_FRAME || (type == F_NOP && (id || len))) {
            synced = 0;
            buf_consume(&inbuf, 1);
            continue;
        }
        if (n < HDR + (size_t)len) {
            /* A put's data is written as it comes, not once its frame is whole (and data for
             * a channel that is gone dropped): the rest of the frame is what the header,
             * rewritten in place of bytes already taken, says is left, and the port buffer
             * never holds more than a piece of it. */
            struct put *u = NULL;
            size_t part = n - HDR;
            if (type == F_STDIN && part >= PUT_PART &&
                ((u = find_put(id)) || !find_channel(id))) {
                if (u)
                    put_data(u, p + HDR, (uint32_t)part);
                buf_consume(&inbuf, part);
                unsigned char *h = inbuf.p + inbuf.off;
                h[0] = (unsigned char)type;
                put_u32(h + 1, id);
                put_u32(h + 5, len - (uint32_t)part);
            }
            return;
        }
        if (type == F_HELLO) {
            buf_consume(&inbuf, HDR + len);
            hello();
            continue;
        }
        host_frame(type, id, p + HDR, len);
        buf_consume(&inbuf, HDR + len);
    }
}

/* -- the port ---------------------------------------------------------------------------- */

static int open_port(void) {
    for (;;) {
        DIR *d = opendir("/sys/class/virtio-ports");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            char path[300], name[64] = "";
            snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
            FILE *f = fopen(path, "r");
            if (!f)
                continue;
            if (!fgets(name, sizeof name, f))
                name[0] = 0;
            fclose(f);
            name[strcspn(name, "\n")] = 0;
            if (!strcmp(name, "vers.agent")) {
                snprintf(path, sizeof path, "/dev/%s", e->d_name);
                closedir(d);
                int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
                if (fd < 0) {
                    perror("vers-agent: open port");
                    exit(1);
                }
                /* SIGIO on host connect/disconnect: no busy loop while nobody is connected */
                fcntl(fd, F_SETOWN, getpid());
                fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC);
                return fd;
            }
        }
        if (d)
            closedir(d);
        usleep(100000);
    }
}

/* Reads and parses what the host sent. Returns 1 if anything was read, 0 if no host is
 * connected (and nothing is left unread), -1 if nothing is there yet.
 *
 * A read of the port returns one virtio buffer (4 KiB) at most, but a readv of many 4 KiB pieces
 * goes on from buffer to buffer while each one fills its piece, so one system call takes up to
 * PORT_IOV buffers: under TCG system calls cost the guest more than the copies do. */
static int read_port(void) {
    int got = 0;
    for (int i = 0; i < 16; i++) {
        size_t want = (size_t)PORT_IOV * 4096;
        buf_reserve(&inbuf, want);
        unsigned char *dst = inbuf.p + inbuf.off + inbuf.len;
        struct iovec iov[PORT_IOV];
        for (int k = 0; k < PORT_IOV; k++) {
            iov[k].iov_base = dst + (size_t)k * 4096;
            iov[k].iov_len = 4096;
        }
        ssize_t r = readv(port, iov, PORT_IOV);
        if (r > 0) {
            inbuf.len += (size_t)r;
            parse_input();
            got = 1;
            continue;
        }
        if (r == 0 && !got)  /* no host connected */
            return 0;
        return got ? 1 : -1;
    }
    return 1;
}

static void write_port(void) {
    while (outbuf.len) {
        ssize_t w = write(port, outbuf.p + outbuf.off, outbuf.len);
        if (w <= 0)
            return;
        buf_consume(&outbuf, (size_t)w);
    }
}

/* -- commands ---------------------------------------------------------------------------- */

/* Reads what a command wrote, as far as the host's credit and our port backlog allow.
 * Returns 1 when the fd is exhausted for now (EAGAIN) or closed, 0 when stopped by credit. */
static int pump_output(struct channel *c, int *fd, int type) {
    while (*fd >= 0) {
        if (!c->out_credit || outbuf.len >= OUT_HIGH)
            return 0;
        uint32_t want = c->out_credit < OUT_CHUNK ? c->out_credit : OUT_CHUNK;
        buf_reserve(&outbuf, HDR + want);
        unsigned char *dst = outbuf.p + outbuf.off + outbuf.len + HDR;
        ssize_t r = read(*fd, dst, want);
        if (r > 0) {
            frame_header(type, c->id, (uint32_t)r);
            outbuf.len += (size_t)r;
            c->out_credit -= (uint32_t)r;
            continue;
        }
        if (r < 0 && errno == EAGAIN)
            return 1;
        if (r < 0 && errno == EINTR)
            continue;
        /* EOF, or EIO from a pty master once every slave holder is gone */
        if (c->pty) {
            close_fd(fd);
            c->in_fd = -1;
        } else {
            close_fd(fd);
        }
        return 1;
    }
    return 1;
}

static void pump_stdin(struct channel *c) {
    while (c->in_fd >= 0 && c->in.len) {
        ssize_t w = write(c->in_fd, c->in.p + c->in.off, c->in.len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            break;
        if (w < 0) {  /* EPIPE: the command stopped reading; what is left is dropped */
            c->in_done += (uint32_t)c->in.len;
            c->in.len = c->in.off = 0;
            if (!c->pty)
                close_fd(&c->in_fd);
            break;
        }
        buf_consume(&c->in, (size_t)w);
        c->in_done += (uint32_t)w;
    }
    if (c->in_done && (c->in_done >= (WINDOW / 4) || !c->in.len)) {
        send_u32(F_CREDIT, c->id, c->in_done);
        c->in_done = 0;
    }
    if (c->stdin_eof && !c->in.len && c->in_fd >= 0) {
        if (c->pty) {
            unsigned char eot = 4;  /* ^D: end of input for the terminal's reader */
            if (write(c->in_fd, &eot, 1) == 1)
                c->stdin_eof = 0;
        } else {
            close_fd(&c->in_fd);
        }
    }
}

static void reap(void) {
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        if (fs_reaped(pid, st))
            continue;
        for (int i = 0; i < MAX_CHANNELS; i++)
            if (chans[i].used && chans[i].pid == pid) {
                chans[i].pid = 0;
                chans[i].status = st;
            }
        for (size_t i = 0; i < sizeof dying / sizeof dying[0]; i++)
            if (dying[i].pgid == pid)
                dying[i].pgid = 0;
    }
}

static void kill_stragglers(void) {
    long long t = now_ms();
    for (size_t i = 0; i < sizeof dying / sizeof dying[0]; i++)
        if (dying[i].pgid && t >= dying[i].kill_at) {
            kill(-dying[i].pgid, SIGKILL);
            dying[i].pgid = 0;
        }
}

/* A command that exited is finished once what it wrote is read: EXIT follows the last output. */
static void finish_channels(void) {
    for (int i = 0; i < MAX_CHANNELS; i++) {
        struct channel *c = &chans[i];
        if (!c->used || c->pid)
            continue;
        int done = pump_output(c, &c->out_fd, F_STDOUT);
        if (!c->pty)
            done &= pump_output(c, &c->err_fd, F_STDERR);
        if (!done)
            continue;
        unsigned char p[8];
        int st = c->status;
        put_u32(p, WIFSIGNALED(st) ? 1 : 0);
        put_u32(p + 4, (uint32_t)(WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st)));
        send_frame(F_EXIT, c->id, p, 8);
        free_channel(c);
    }
}

static void drain_wake_pipe(void) {
    char junk[64];
    while (read(wake_pipe[0], junk, sizeof junk) > 0) {
    }
}

int main(void) {
    if (pipe(wake_pipe) < 0)
        return 1;
    set_nonblock(wake_pipe[0]);
    set_nonblock(wake_pipe[1]);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);
    sigaction(SIGIO, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    setenv("HOME", "/root", 0);
    if (!getenv("PATH"))
        setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
    for (int i = 0; i < MAX_CHANNELS; i++)
        chans[i].in_fd = chans[i].out_fd = chans[i].err_fd = -1;
    port = open_port();
    struct pollfd fds[3 + 3 * MAX_CHANNELS];
    struct channel *owner[3 + 3 * MAX_CHANNELS];
    for (;;) {
        reap();
        kill_stragglers();
        finish_channels();
        write_port();
        int nf = 0;
        fds[nf].fd = wake_pipe[0];
        fds[nf].events = POLLIN;
        owner[nf++] = NULL;
        fds[nf].fd = port;
        fds[nf].events = POLLIN | (outbuf.len ? POLLOUT : 0);
        owner[nf++] = NULL;
        int rep_at = -1;
        if (fz.rep >= 0) {
            rep_at = nf;
            fds[nf].fd = fz.rep;
            fds[nf].events = POLLIN;
            owner[nf++] = NULL;
        }
        for (int i = 0; i < MAX_CHANNELS; i++) {
            struct channel *c = &chans[i];
            if (!c->used)
                continue;
            int readable = c->out_credit && outbuf.len < OUT_HIGH;
            short ev_out = readable ? POLLIN : 0;
            if (c->pty) {
                short ev = ev_out | (c->in.len || c->stdin_eof ? POLLOUT : 0);
                if (c->out_fd >= 0 && ev) {
                    fds[nf].fd = c->out_fd;
                    fds[nf].events = ev;
                    owner[nf++] = c;
                }
                continue;
            }
            if (c->out_fd >= 0 && ev_out) {
                fds[nf].fd = c->out_fd;
                fds[nf].events = ev_out;
                owner[nf++] = c;
            }
            if (c->err_fd >= 0 && ev_out) {
                fds[nf].fd = c->err_fd;
                fds[nf].events = ev_out;
                owner[nf++] = c;
            }
            if (c->in_fd >= 0 && (c->in.len || c->stdin_eof)) {
                fds[nf].fd = c->in_fd;
                fds[nf].events = POLLOUT;
                owner[nf++] = c;
            }
        }
        int has_dying = 0;
        for (size_t i = 0; i < sizeof dying / sizeof dying[0]; i++)
            has_dying |= dying[i].pgid != 0;
        int r = poll(fds, (nfds_t)nf, has_dying ? 100 : 1000);
        if (r < 0 && errno != EINTR)
            return 1;
        if (r <= 0)
            continue;
        if (fds[1].revents & POLLHUP) {
            /* The port says no host is connected. A new host's first bytes come on the data
             * queue and its "connected" on the control queue, so the guest may read the bytes
             * (and answer a HELLO) before it knows the host is there, and cannot write the
             * answer until it does. So what is readable is read first; a session whose HELLO
             * came less than CONNECT_GRACE_MS ago is kept while the port catches up; otherwise
             * everything is dropped and the agent sleeps until SIGIO says the host side changed
             * (or a second passes). The wake pipe is drained only after that sleep, so a SIGIO
             * that came in since the poll above cuts it short. */
            if (read_port() > 0)
                continue;
            if (synced && now_ms() - hello_at < CONNECT_GRACE_MS) {
                struct pollfd w = {.fd = wake_pipe[0], .events = POLLIN};
                poll(&w, 1, 10);
                drain_wake_pipe();
                continue;
            }
            reset_session(1);
            struct pollfd p = {.fd = port, .events = POLLIN};
            if (poll(&p, 1, 0) == 1 && (p.revents & POLLHUP)) {
                struct pollfd w = {.fd = wake_pipe[0], .events = POLLIN};
                poll(&w, 1, 1000);
            }
            drain_wake_pipe();
            continue;
        }
        if (fds[0].revents)
            drain_wake_pipe();
        if (fds[1].revents & POLLIN)
            read_port();
        if (fds[1].revents & POLLOUT)
            write_port();
        if (rep_at >= 0 && fds[rep_at].revents)
            fs_read_report();
        for (int k = 2; k < nf; k++) {
            struct channel *c = owner[k];
            if (!c || !fds[k].revents || !c->used)
                continue;
            if (fds[k].fd == c->in_fd && (fds[k].events & POLLOUT))
                pump_stdin(c);
            if (fds[k].fd == c->out_fd && (fds[k].revents & (POLLIN | POLLHUP | POLLERR)))
                pump_output(c, &c->out_fd, F_STDOUT);
            else if (fds[k].fd == c->err_fd && (fds[k].revents & (POLLIN | POLLHUP | POLLERR)))
                pump_output(c, &c->err_fd, F_STDERR);
        }
        for (int i = 0; i < MAX_CHANNELS; i++)
            if (chans[i].used && (chans[i].in.len || chans[i].stdin_eof) && chans[i].in_fd >= 0)
                pump_stdin(&chans[i]);
    }
}
