package ingest

import (
	"hash/maphash"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// senderLimits holds a token bucket per sender (tenant and subject), bounded in memory: a
// shard that is full forgets its least recently seen sender, whose next request starts
// with a full bucket again (a generous, never a stricter, outcome).
type senderLimits struct {
	rate   rate.Limit
	burst  int
	seed   maphash.Seed
	shards [64]limitShard
}

type limitShard struct {
	mu      sync.Mutex
	senders map[string]*senderLimit
}

type senderLimit struct {
	lim  *rate.Limiter
	seen time.Time
}

// maxSendersPerShard bounds the memory of the limiter: 64 shards × 2048 senders.
const maxSendersPerShard = 2048

func newSenderLimits(perSecond float64, burst int) *senderLimits {
	if burst <= 0 {
		burst = int(math.Max(1, math.Ceil(perSecond)))
	}
	l := &senderLimits{rate: rate.Limit(perSecond), burst: burst, seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].senders = map[string]*senderLimit{}
	}
	return l
}

// allow takes n events from the sender's bucket. When it refuses, it says how long until the
// bucket holds n again (n above the burst can never pass: the wait is then the time to refill
// the whole burst, and the caller should split its request).
func (l *senderLimits) allow(sender string, n int, now time.Time) (ok bool, retryAfter time.Duration) {
	sh := &l.shards[maphash.String(l.seed, sender)%uint64(len(l.shards))]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	s := sh.senders[sender]
	if s == nil {
		if len(sh.senders) >= maxSendersPerShard {
			var oldest string
			var at time.Time
			for k, v := range sh.senders {
				if oldest == "" || v.seen.Before(at) {
					oldest, at = k, v.seen
				}
			}
			delete(sh.senders, oldest)
		}
		s = &senderLimit{lim: rate.NewLimiter(l.rate, l.burst)}
		sh.senders[sender] = s
	}
	s.seen = now
	if s.lim.AllowN(now, n) {
		return true, 0
	}
	want := min(n, l.burst)
	r := s.lim.ReserveN(now, want)
	if !r.OK() {
		return false, time.Second
	}
	d := r.DelayFrom(now)
	r.CancelAt(now)
	return false, d
}
