// SPDX-License-Identifier: MIT
/*
 * stream.c - messages over a byte stream (pipes, FIFOs, SOCK_STREAM sockets),
 * one frame per message:
 *
 *     bytes 0..6   payload length, little-endian (at most 2^56 - 1)
 *     byte  7      FRAME_MAGIC
 *     bytes 8..    payload
 *
 * Receiving.  Bytes come into the handle's buffer (rb) and frames are
 * handed out from there, except the payload of a large frame, which goes
 * straight into the caller's buffer.  The rule that keeps poll() exact for
 * select, selectors and asyncio: whenever the handle holds a whole frame not
 * yet handed out, at least one byte of the stream is still in the kernel, so
 * the descriptor is readable.  Two ways of reading keep it:
 *
 *   - one frame at a time: read the rest of the current frame and the next
 *     frame's first 7 bytes (its length), never its magic byte: one system
 *     call per message while the reader keeps up;
 *   - in batches, once the reader is behind (the 7 bytes read ahead were
 *     there): ask how many bytes are queued (FIONREAD) and read all but the
 *     last: two system calls for as many frames as fit in rb.  FIONREAD
 *     takes the lock the writer takes, so when it finds fewer than
 *     BATCH_MIN frames' worth, it is not asked again for BACKOFF reads.
 *
 * The receive side's state (where a frame's payload goes):
 *
 *                 header says: payload >= DIRECT_MIN
 *     +-------------+ -----------------------------> +-----------+
 *     | RX_BUFFERED |                                | RX_DIRECT |
 *     +-------------+ <----------------------------- +-----------+
 *            |         its last payload byte came          |
 *            |                                             |
 *            +---- end of stream inside a frame, ----------+
 *            |     bytes that are not a frame,             |
 *            v     fork() in the middle of a frame         v
 *     +-----------+
 *     | RX_BROKEN |  every receive returns broken_rc
 *     +-----------+
 *
 * Sending.  A frame goes out with one write (small ones are copied with
 * their header into one buffer) or one writev; send_many writes many frames
 * with one writev.  A frame half written when a call returns (-EINTR, a
 * timeout) keeps its progress, and only a call for the same message may go
 * on with it: the stream never interleaves two messages.
 *
 * Descriptors (SOCK_STREAM): the kernel delivers SCM_RIGHTS descriptors with
 * the first bytes of the sendmsg that carried them and stops the read right
 * after that piece, so they belong to the last frame that begins in what a
 * read returned; they are kept with that frame's stream offset until it is
 * handed out.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal_chan.h"

#define FRAME_HDR 8u
#define FRAME_AHEAD 7u /* bytes of the next header read ahead: all but its magic */
#define FRAME_MAGIC 0xa5u
#define FRAME_MAXLEN ((1ull << 56) - 1)

#define RB_SIZE (64u << 10)     /* receive buffer */
#define DIRECT_MIN 4096u        /* payloads this large go straight to the caller */
#define TB_SIZE (16u << 10)     /* send staging buffer */
#define COPY_MAX 1024u          /* frames up to this payload are copied to it */
#define MAX_IOV 512             /* iovecs per writev (IOV_MAX is 1024) */
#define FDQ 4                   /* frames with descriptors held at once */
#define BATCH_MIN 4             /* frames that make a batch read worth it */
#define BACKOFF 8               /* single reads before asking FIONREAD again */

enum rx_state {
	RX_BUFFERED, /* frames come through rb */
	RX_DIRECT,   /* a large frame's payload goes into the caller's buffer */
	RX_BROKEN,   /* out of step for good: broken_rc */
};

struct fdrec {
	uint64_t at; /* stream offset of the frame they came with */
	unsigned n;
	int fd[CHAN_MAXFDS];
};

struct stream_chan {
	struct pyipc_chan c;
	int is_socket;

	/* receive side, under c.rlock */
	enum rx_state state;
	int broken_rc;
	int behind;        /* the last read found the next frame begun */
	int backoff;       /* single reads to do before a batch is tried */
	uint8_t *rb;       /* RB_SIZE bytes */
	uint32_t head;     /* rb[head, tail): bytes not handed out; a frame */
	uint32_t tail;     /* ... starts at head (RX_BUFFERED) */
	uint64_t in_total; /* stream bytes read so far (rb[tail]'s offset) */
	char *d_buf;       /* RX_DIRECT: the caller's buffer (only it may go on) */
	uint64_t d_len;    /* ... the payload's length */
	uint64_t d_pos;    /* ... and how much of it is there */
	uint64_t d_at;     /* ... the frame's stream offset */
	int d_magic;       /* ... its magic byte is still to be read */
	struct fdrec fdq[FDQ];
	unsigned nfdq;

	/* send side, under c.wlock */
	int wtorn;         /* forked in the middle of a frame */
	uint64_t wpos;     /* bytes of the current frame already written */
	const char *wdata; /* ... whose payload is this, */
	uint64_t wlen;     /* ... of this length */
	uint8_t *tb;       /* TB_SIZE bytes of staging */
	uint8_t hdrs[MAX_IOV / 2][FRAME_HDR];
};

#define S(c) ((struct stream_chan *)(c))

static inline uint64_t get_len(const uint8_t *p)
{
	uint64_t len = 0;
	unsigned i;

	for (i = 0; i < FRAME_AHEAD; i++)
		len |= (uint64_t)p[i] << (8 * i);
	return len;
}

static inline void put_hdr(uint8_t *p, uint64_t len)
{
	unsigned i;

	for (i = 0; i < FRAME_AHEAD; i++)
		p[i] = (uint8_t)(len >> (8 * i));
	p[FRAME_AHEAD] = FRAME_MAGIC;
}

/* ---- receive: descriptors ---- */

/* The stream offset of rb[i]. */
static inline uint64_t off_of(const struct stream_chan *s, uint32_t i)
{
	return s->in_total - (s->tail - i);
}

static void keep_fds(struct stream_chan *s, uint64_t at, const int *got, unsigned n)
{
	struct fdrec *r = NULL;
	unsigned i;

	for (i = 0; i < s->nfdq; i++)
		if (s->fdq[i].at == at)
			r = &s->fdq[i];
	if (!r && s->nfdq < FDQ) {
		r = &s->fdq[s->nfdq++];
		r->at = at;
		r->n = 0;
	}
	for (i = 0; i < n; i++) {
		if (r && r->n < CHAN_MAXFDS)
			r->fd[r->n++] = got[i];
		else
			fds_close(&got[i], 1); /* more than one message carries */
	}
}

/* Descriptors a read into rb brought: they are the last frame's that
 * begins at or before the last byte read. */
static void fds_from_read(struct stream_chan *s, const int *got, unsigned n)
{
	uint32_t i = s->head;
	uint64_t len;

	while (s->tail - i >= FRAME_AHEAD) {
		len = get_len(s->rb + i);
		if (FRAME_HDR + len >= s->tail - i)
			break; /* this frame reaches the last byte read */
		i += FRAME_HDR + (uint32_t)len;
	}
	keep_fds(s, off_of(s, i), got, n);
}

/* Hand out the descriptors of the frame at stream offset `at` (to fds, or
 * closed if unwanted); drop any of frames before it. */
static void hand_fds(struct stream_chan *s, uint64_t at, int *fds, size_t maxfds, size_t *nfds)
{
	size_t k = 0;
	unsigned i, j, keep = 0;

	for (i = 0; i < s->nfdq; i++) {
		struct fdrec *r = &s->fdq[i];

		if (r->at > at) {
			s->fdq[keep++] = *r;
			continue;
		}
		for (j = 0; j < r->n; j++) {
			if (r->at == at && fds && k < maxfds)
				fds[k++] = r->fd[j];
			else
				fds_close(&r->fd[j], 1);
		}
	}
	s->nfdq = keep;
	if (nfds)
		*nfds = k;
}

static void stream_drop_fds(struct pyipc_chan *c)
{
	struct stream_chan *s = S(c);
	unsigned i;

	for (i = 0; i < s->nfdq; i++)
		fds_close(s->fdq[i].fd, s->fdq[i].n);
	s->nfdq = 0;
}

/* ---- receive: reading ---- */

static int broken(struct stream_chan *s, int rc)
{
	s->state = RX_BROKEN;
	s->broken_rc = rc;
	return rc;
}

/* One read of up to n iovecs; sockets also collect descriptors. */
static ssize_t rx_read(struct stream_chan *s, struct iovec *iov, int n, int *got, unsigned *ngot)
{
	*ngot = 0;
	if (!s->is_socket)
		return n == 1 ? read(s->c.rfd, iov[0].iov_base, iov[0].iov_len)
			      : readv(s->c.rfd, iov, n);
	/* Always with room for descriptors: a read may take the first bytes
	 * of a message that carries some, and without that room the kernel
	 * would close them before a later recv_fds could ask. */
	return fd_recvmsg(s->c.rfd, iov, n, got, ngot, 0);
}

/*
 * Nothing more and nothing held: is it the end?  A FIFO whose writer has
 * not come yet also reads 0; only POLLHUP (a writer came and went) or a
 * closed pipe(2) write end means EOF.  Then -EPIPE; 0 when bytes came after
 * all; -EAGAIN to wait.
 */
static int stream_eof(struct stream_chan *s)
{
	struct pollfd p = { .fd = s->c.rfd, .events = POLLIN };

	if (s->is_socket)
		return -EPIPE;
	if (poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLIN | POLLERR)))
		return (p.revents & POLLIN) ? 0 : -EPIPE;
	return -EAGAIN;
}

/* How refill reads: as the reader's pace says, or in one way. */
enum refill_mode {
	READ_AUTO,   /* in batches while the reader is behind (see the top) */
	READ_BATCH,  /* in a batch if there is more than one frame */
	READ_SINGLE, /* the current frame and the next one's length only */
};

/*
 * Read more of the stream into rb: `single` bytes reach the end of the
 * current frame (plus FRAME_AHEAD of the next when `ahead`).  In batch mode
 * read all the kernel holds but one byte, when that is more.  0 when bytes
 * came (or it is worth looking again), else -errno: the end of the stream,
 * a wait that ended.
 */
static int refill(struct stream_chan *s, uint32_t single, int ahead, enum refill_mode mode,
		  int64_t deadline)
{
	int got[CHAN_MAXFDS];
	struct iovec iov;
	uint32_t want = single, held = s->tail - s->head;
	unsigned ngot;
	ssize_t r;
	int rc, avail;

	if (ahead && mode == READ_AUTO && s->behind && s->backoff)
		s->backoff--;
	else if (ahead && (mode == READ_BATCH || (mode == READ_AUTO && s->behind)) &&
		 ioctl(s->c.rfd, FIONREAD, &avail) == 0) {
		if ((uint32_t)avail > single)
			want = (uint32_t)avail - 1;
		if (mode == READ_AUTO && (uint64_t)avail < (uint64_t)BATCH_MIN * single)
			s->backoff = BACKOFF;
	}
	/* Room: move what is held to the front when the end is near. */
	if (s->head && RB_SIZE - s->tail < want) {
		memmove(s->rb, s->rb + s->head, held);
		s->head = 0;
		s->tail = held;
	}
	if (want > RB_SIZE - s->tail)
		want = RB_SIZE - s->tail; /* reading less is always safe */
	iov.iov_base = s->rb + s->tail;
	iov.iov_len = want;
	for (;;) {
		r = rx_read(s, &iov, 1, got, &ngot);
		if (r > 0) {
			s->tail += (uint32_t)r;
			s->in_total += (uint64_t)r;
			if (ngot)
				fds_from_read(s, got, ngot);
			/* The next frame had begun: the reader is behind. */
			if (ahead && want == single)
				s->behind = (uint32_t)r == single;
			return 0;
		}
		if (r == 0) {
			if (held)
				return broken(s, -ECONNRESET); /* the writer died in a frame */
			rc = stream_eof(s);
			if (rc == 0)
				continue;
			if (rc != -EAGAIN)
				return rc;
		} else if (errno == EINTR) {
			continue;
		} else if (errno != EAGAIN) {
			return -errno;
		}
		s->behind = 0; /* caught up */
		rc = chan_wait_fd(s->c.rfd, POLLIN, deadline);
		return rc;
	}
}

/*
 * RX_DIRECT: the payload of a large frame into the caller's buffer, with the
 * next frame's length read ahead into rb.  Only the buffer it began with may
 * go on with it.
 */
static int64_t direct(struct stream_chan *s, char *buf, int *fds, size_t maxfds, size_t *nfds,
		      int64_t deadline)
{
	int got[CHAN_MAXFDS];
	struct iovec iov[3];
	uint8_t magic;
	unsigned ngot;
	uint64_t take;
	ssize_t r;
	int n, rc;

	if (buf != s->d_buf)
		return -EBUSY; /* another caller's half-received message */
	for (;;) {
		n = 0;
		if (s->d_magic) {
			iov[n].iov_base = &magic;
			iov[n++].iov_len = 1;
		}
		if (s->d_len > s->d_pos) {
			iov[n].iov_base = buf + s->d_pos;
			iov[n++].iov_len = s->d_len - s->d_pos;
		}
		iov[n].iov_base = s->rb;
		iov[n++].iov_len = FRAME_AHEAD;
		r = rx_read(s, iov, n, got, &ngot);
		if (r > 0) {
			take = (uint64_t)r;
			s->in_total += take;
			if (s->d_magic) {
				if (magic != FRAME_MAGIC)
					return broken(s, -EBADMSG);
				s->d_magic = 0;
				take--;
			}
			if (take > s->d_len - s->d_pos) {
				s->tail = (uint32_t)(take - (s->d_len - s->d_pos));
				s->d_pos = s->d_len;
			} else {
				s->d_pos += take;
			}
			if (ngot)
				keep_fds(s, s->tail ? off_of(s, 0) : s->d_at, got, ngot);
			if (s->d_pos < s->d_len)
				continue;
			s->state = RX_BUFFERED;
			s->d_buf = NULL;
			hand_fds(s, s->d_at, fds, maxfds, nfds);
			return (int64_t)s->d_len;
		}
		if (r == 0)
			return broken(s, -ECONNRESET);
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -errno;
		rc = chan_wait_fd(s->c.rfd, POLLIN, deadline);
		if (rc)
			return rc;
	}
}

/* The frame at head (7 bytes of its header at least) is large: its held
 * payload bytes go to the caller's buffer and the rest, its magic byte
 * too if not yet in, will follow straight there (RX_DIRECT). */
static int64_t direct_start(struct stream_chan *s, uint64_t len, char *buf, int *fds,
			    size_t maxfds, size_t *nfds, int64_t deadline)
{
	uint32_t held = s->tail - s->head;

	s->d_at = off_of(s, s->head);
	s->d_len = len;
	s->d_magic = held < FRAME_HDR;
	s->d_pos = s->d_magic ? 0 : held - FRAME_HDR;
	memcpy(buf, s->rb + s->head + FRAME_HDR, s->d_pos);
	s->head = s->tail = 0;
	s->d_buf = buf;
	s->state = RX_DIRECT;
	return direct(s, buf, fds, maxfds, nfds, deadline);
}

/* What the frame at head is: 1 whole (*len set), 0 not yet (*len set when
 * its length is known, else 0; *single: bytes to read to its end), or
 * -EBADMSG. */
static int frame_at_head(struct stream_chan *s, uint64_t *len, uint32_t *single, int *ahead)
{
	uint32_t held = s->tail - s->head;
	const uint8_t *p = s->rb + s->head;

	*len = 0;
	if (held < FRAME_AHEAD) {
		*single = FRAME_AHEAD - held;
		*ahead = 0;
		return 0;
	}
	*len = get_len(p);
	if (held >= FRAME_HDR && p[FRAME_AHEAD] != FRAME_MAGIC)
		return broken(s, -EBADMSG);
	if (held >= FRAME_HDR && held - FRAME_HDR >= *len)
		return 1;
	/* Only frames below DIRECT_MIN are read into rb, so this fits. */
	*single = (uint32_t)(FRAME_HDR + *len - held) + FRAME_AHEAD;
	*ahead = 1;
	return 0;
}

/* Hand out the whole frame at head into buf. */
static uint64_t take_frame(struct stream_chan *s, uint64_t len, char *buf, int *fds,
			   size_t maxfds, size_t *nfds)
{
	uint64_t at = off_of(s, s->head);

	memcpy(buf, s->rb + s->head + FRAME_HDR, len);
	s->head += FRAME_HDR + (uint32_t)len;
	if (s->head == s->tail)
		s->head = s->tail = 0;
	if (s->nfdq || fds)
		hand_fds(s, at, fds, maxfds, nfds);
	return len;
}

static int64_t stream_recv(struct pyipc_chan *c, char *buf, uint64_t cap, unsigned *prio,
			   int *fds, size_t maxfds, size_t *nfds, int64_t deadline)
{
	struct stream_chan *s = S(c);
	uint32_t single;
	uint64_t len;
	int rc, ahead;

	if (unlikely(s->state != RX_BUFFERED)) {
		if (s->state == RX_BROKEN)
			return s->broken_rc;
		return direct(s, buf, fds, maxfds, nfds, deadline);
	}
	for (;;) {
		rc = frame_at_head(s, &len, &single, &ahead);
		if (rc < 0)
			return rc;
		if (rc == 1) {
			if (len > cap)
				return chan_too_large(c, len);
			return (int64_t)take_frame(s, len, buf, fds, maxfds, nfds);
		}
		if (len > cap) {
			/* Report a length only once its magic byte is in. */
			if (s->tail - s->head < FRAME_HDR) {
				rc = refill(s, 1, 0, READ_SINGLE, deadline);
				if (rc)
					return rc;
				continue;
			}
			return chan_too_large(c, len);
		}
		if (len >= DIRECT_MIN)
			return direct_start(s, len, buf, fds, maxfds, nfds, deadline);
		rc = refill(s, single, ahead, READ_AUTO, deadline);
		if (rc)
			return rc;
	}
}

static int64_t stream_recv_many(struct pyipc_chan *c, char *buf, uint64_t cap, uint64_t *lens,
				size_t max, int64_t deadline)
{
	struct stream_chan *s = S(c);
	uint64_t len, off = 0;
	int64_t r;
	uint32_t single;
	size_t count = 0;
	int rc, ahead, topped = 0;

	if (unlikely(s->state != RX_BUFFERED)) {
		if (s->state == RX_BROKEN)
			return s->broken_rc;
		r = direct(s, buf, NULL, 0, NULL, deadline);
		if (r >= 0)
			lens[0] = (uint64_t)r;
		return r < 0 ? r : 1;
	}
	while (count < max) {
		rc = frame_at_head(s, &len, &single, &ahead);
		if (rc < 0)
			return count ? (int64_t)count : rc;
		if (rc == 1) {
			if (len > cap - off) {
				if (count)
					break;
				return chan_too_large(c, len);
			}
			lens[count++] = take_frame(s, len, buf + off, NULL, 0, NULL);
			off += len;
			continue;
		}
		if (count) {
			/*
			 * Messages in hand, and only those already there are
			 * wanted.  A batch read leaves the last byte of the
			 * stream in the kernel (see refill); one read of the
			 * rest of that frame, which cannot take a whole frame
			 * more, brings it too.
			 */
			if (topped || len >= DIRECT_MIN)
				break;
			topped = 1;
			if (refill(s, single, ahead, READ_SINGLE, NOWAIT))
				break;
			continue;
		}
		if (len > cap) {
			if (s->tail - s->head < FRAME_HDR) {
				rc = refill(s, 1, 0, READ_SINGLE, deadline);
				if (rc)
					return rc;
				continue;
			}
			return chan_too_large(c, len);
		}
		if (len >= DIRECT_MIN) {
			r = direct_start(s, len, buf, NULL, 0, NULL, deadline);
			if (r >= 0)
				lens[0] = (uint64_t)r;
			return r < 0 ? r : 1;
		}
		rc = refill(s, single, ahead, READ_BATCH, deadline);
		if (rc)
			return rc;
	}
	return (int64_t)count;
}

static int stream_pending(const struct pyipc_chan *c)
{
	const struct stream_chan *s = (const struct stream_chan *)c;
	uint32_t held = s->tail - s->head;

	return s->state == RX_BUFFERED && held >= FRAME_HDR &&
	       held - FRAME_HDR >= get_len(s->rb + s->head);
}

static int stream_midframe(const struct pyipc_chan *c, int dir)
{
	const struct stream_chan *s = (const struct stream_chan *)c;

	return dir ? s->wpos != 0 : s->state == RX_DIRECT;
}

/* ---- send ---- */

/*
 * Write to a pipe without dying of SIGPIPE and without touching the
 * process's signal dispositions.  When SIGPIPE is ignored (CPython's
 * default) a write cannot raise it, so one query of the disposition spares
 * the full dance.  Otherwise: block SIGPIPE in this thread around the write,
 * and if the write raised one (EPIPE), consume it before unblocking.  If the
 * thread already blocked SIGPIPE, a pending one may be the caller's: leave
 * it be.  -1 with errno set on failure, as write().
 */
static ssize_t pipe_write(int fd, const struct iovec *iov, int n)
{
	static const struct timespec zero = { 0, 0 };
	struct sigaction sa;
	sigset_t pipe_set, old;
	ssize_t w;
	int err;

	if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN &&
	    !(sa.sa_flags & SA_SIGINFO))
		return n == 1 ? write(fd, iov[0].iov_base, iov[0].iov_len) : writev(fd, iov, n);
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	err = pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
	if (err) {
		errno = err;
		return -1;
	}
	w = n == 1 ? write(fd, iov[0].iov_base, iov[0].iov_len) : writev(fd, iov, n);
	err = errno;
	if (w < 0 && err == EPIPE && !sigismember(&old, SIGPIPE)) {
		while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
			;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	errno = err;
	return w;
}

static ssize_t tx_write(struct stream_chan *s, const struct iovec *iov, int n, const int *fds,
			size_t nfds)
{
	if (!s->is_socket)
		return pipe_write(s->c.wfd, iov, n);
	if (n == 1 && !nfds) /* send() is cheaper than sendmsg() */
		return send(s->c.wfd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL | MSG_DONTWAIT);
	return fd_sendmsg(s->c.wfd, iov, n, fds, nfds);
}

/*
 * The iovecs for messages [0, n) from the first one's byte s->wpos on:
 * small frames copied, header and payload, into tb one after another (one
 * piece), larger ones as a header and their payload in place.  Returns how
 * many iovecs; *bytes, their total.
 */
static int tx_iov(struct stream_chan *s, const char *data, const uint64_t *lens, size_t n,
		  struct iovec *iov, uint64_t *bytes)
{
	uint64_t skip = s->wpos, off = 0, len, part;
	uint32_t used = 0;
	int niov = 0, nhdr = 0, in_tb = 0;
	size_t i;

	*bytes = 0;
	for (i = 0; i < n && niov <= MAX_IOV - 2; off += lens[i], i++) {
		len = lens[i];
		if (len <= COPY_MAX && used + FRAME_HDR + len <= TB_SIZE) {
			uint8_t *p = s->tb + used;

			put_hdr(p, len);
			memcpy(p + FRAME_HDR, data + off, len);
			part = FRAME_HDR + len - skip;
			if (in_tb) {
				iov[niov - 1].iov_len += part;
			} else {
				iov[niov].iov_base = p + skip;
				iov[niov++].iov_len = part;
				in_tb = 1;
			}
			used += FRAME_HDR + (uint32_t)len;
		} else {
			if (nhdr == MAX_IOV / 2)
				break;
			in_tb = 0;
			if (skip < FRAME_HDR) {
				put_hdr(s->hdrs[nhdr], len);
				iov[niov].iov_base = s->hdrs[nhdr++] + skip;
				iov[niov++].iov_len = FRAME_HDR - skip;
				part = 0;
			} else {
				part = skip - FRAME_HDR;
			}
			if (len > part) {
				iov[niov].iov_base = (char *)data + off + part;
				iov[niov++].iov_len = len - part;
			}
		}
		*bytes += FRAME_HDR + len - skip;
		skip = 0;
	}
	return niov;
}

/*
 * Write the frames of messages [0, n), the first resumed at s->wpos; fds
 * ride with the first frame's first byte.  0 when all are out, else -errno;
 * *sent counts whole messages written either way.
 */
static int stream_write(struct stream_chan *s, const char *data, const uint64_t *lens, size_t n,
			const int *fds, size_t nfds, size_t *sent, int64_t deadline)
{
	struct iovec iov[MAX_IOV];
	uint64_t bytes, left, w64;
	ssize_t w;
	int niov, rc;

	*sent = 0;
	if (unlikely(s->wtorn))
		return -ENOTRECOVERABLE;
	/* Half a frame is out: only the call that started it (same message)
	 * may finish it, or the stream would interleave two messages. */
	if (s->wpos && (s->wdata != data || s->wlen != lens[0]))
		return -EBUSY;
	for (;;) {
		niov = tx_iov(s, data, lens, n, iov, &bytes);
		w = tx_write(s, iov, niov, s->wpos ? NULL : fds, s->wpos ? 0 : nfds);
		if (w > 0) {
			fds = NULL;
			nfds = 0;
			/* Count the messages that went whole. */
			for (w64 = (uint64_t)w; w64;) {
				left = FRAME_HDR + lens[0] - s->wpos;
				if (w64 < left) {
					s->wpos += w64;
					break;
				}
				w64 -= left;
				s->wpos = 0;
				data += lens[0];
				lens++;
				n--;
				(*sent)++;
			}
			if (n == 0)
				return 0;
			s->wdata = data;
			s->wlen = lens[0];
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno != EAGAIN) {
			rc = -errno;
			if (rc == -ECONNRESET || rc == -ENOTCONN)
				rc = -EPIPE;
			return rc;
		}
		rc = chan_wait_fd(s->c.wfd, POLLOUT, deadline);
		if (rc)
			return rc;
	}
}

static int stream_send(struct pyipc_chan *c, const char *data, size_t len, unsigned prio,
		       const int *fds, size_t nfds, int64_t deadline)
{
	uint64_t l = len;
	size_t sent;

	if (l > FRAME_MAXLEN)
		return -EMSGSIZE;
	return stream_write(S(c), data, &l, 1, fds, nfds, &sent, deadline);
}

static int stream_send_many(struct pyipc_chan *c, const char *data, const uint64_t *lens, size_t n,
			    size_t *sent, int64_t deadline)
{
	size_t i;

	*sent = 0;
	for (i = 0; i < n; i++)
		if (lens[i] > FRAME_MAXLEN)
			return -EMSGSIZE;
	return stream_write(S(c), data, lens, n, NULL, 0, sent, deadline);
}

/* ---- the handle ---- */

static uint64_t stream_many_bufsize(const struct pyipc_chan *c, size_t max)
{
	return RB_SIZE;
}

/* A frame half received into a buffer of a thread that did not come along
 * into the child, or half written by one: out of step for good here. */
static void stream_in_child(struct pyipc_chan *c)
{
	struct stream_chan *s = S(c);

	if (s->state == RX_DIRECT) {
		s->state = RX_BROKEN;
		s->broken_rc = -ENOTRECOVERABLE;
	}
	if (s->wpos)
		s->wtorn = 1;
}

static void stream_release(struct pyipc_chan *c)
{
	free(S(c)->rb);
	free(S(c)->tb);
}

static const struct chan_ops stream_ops = {
	.send = stream_send,
	.recv = stream_recv,
	.send_many = stream_send_many,
	.recv_many = stream_recv_many,
	.many_bufsize = stream_many_bufsize,
	.pending = stream_pending,
	.midframe = stream_midframe,
	.in_child = stream_in_child,
	.drop_fds = stream_drop_fds,
	.release = stream_release,
};

static const struct chan_ops sock_stream_ops = {
	.send = stream_send,
	.recv = stream_recv,
	.send_many = stream_send_many,
	.recv_many = stream_recv_many,
	.many_bufsize = stream_many_bufsize,
	.pending = stream_pending,
	.midframe = stream_midframe,
	.in_child = stream_in_child,
	.drop_fds = stream_drop_fds,
	.release = stream_release,
	.passes_fds = 1,
};

int stream_chan_new(int rfd, int wfd, int is_socket, struct pyipc_chan **out)
{
	struct stream_chan *s;
	int rc = -ENOMEM;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->is_socket = is_socket;
	s->state = RX_BUFFERED;
	/* Allocated now, so that sending and receiving never allocate. */
	if (rfd >= 0 && !(s->rb = malloc(RB_SIZE)))
		goto err;
	if (wfd >= 0 && !(s->tb = malloc(TB_SIZE)))
		goto err;
	rc = chan_init(&s->c, is_socket ? &sock_stream_ops : &stream_ops, rfd, wfd);
	if (rc)
		goto err;
	s->c.bufsize = RB_SIZE;
	*out = &s->c;
	return 0;
err:
	free(s->rb);
	free(s->tb);
	free(s);
	return rc;
}
