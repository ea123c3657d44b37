package auth

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
)

const cacheShards = 64 // a power of two

// tokenCache maps raw tokens to their verified principals. It is bounded (each shard holds at
// most perShard entries; a full shard drops an expired entry, else a random one) and never
// returns an entry at or past its deadline. Safe for concurrent use.
type tokenCache struct {
	seed     maphash.Seed
	perShard int
	size     atomic.Int64
	shards   [cacheShards]cacheShard
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[string]cacheEntry
	_  [40]byte // keep shards on separate cache lines
}

type cacheEntry struct {
	p        *Principal
	deadline int64  // unix nanoseconds after which the token is refused; 0 = never
	gen      uint64 // the key set generation it was verified with
}

func newTokenCache(size int) *tokenCache {
	c := &tokenCache{seed: maphash.MakeSeed(), perShard: (size + cacheShards - 1) / cacheShards}
	if c.perShard < 1 {
		c.perShard = 1
	}
	for i := range c.shards {
		c.shards[i].m = make(map[string]cacheEntry)
	}
	return c
}

func (c *tokenCache) shard(token string) *cacheShard {
	return &c.shards[maphash.String(c.seed, token)&(cacheShards-1)]
}

// get returns the principal cached for token if its deadline is after now and it was verified
// with key set generation gen (a token verified with an older key set is verified again: its
// key may be gone).
func (c *tokenCache) get(token string, now int64, gen uint64) (*Principal, bool) {
	s := c.shard(token)
	s.mu.RLock()
	e, ok := s.m[token]
	s.mu.RUnlock()
	if !ok || e.gen != gen {
		return nil, false
	}
	if e.deadline != 0 && now >= e.deadline {
		s.mu.Lock()
		if cur, ok := s.m[token]; ok && cur.p == e.p {
			delete(s.m, token)
			c.size.Add(-1)
		}
		s.mu.Unlock()
		return nil, false
	}
	return e.p, true
}

// put caches p under token until deadline (0 = no deadline), for key set generation gen.
func (c *tokenCache) put(token string, p *Principal, deadline, now int64, gen uint64) {
	s := c.shard(token)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[token]; ok {
		s.m[token] = cacheEntry{p: p, deadline: deadline, gen: gen}
		return
	}
	if len(s.m) >= c.perShard {
		// Map iteration starts at a random place: look at a few entries, drop the first
		// expired one, else the first one seen (random eviction).
		victim, n := "", 0
		for k, e := range s.m {
			if victim == "" {
				victim = k
			}
			if e.deadline != 0 && now >= e.deadline {
				victim = k
				break
			}
			if n++; n == 8 {
				break
			}
		}
		delete(s.m, victim)
		c.size.Add(-1)
	}
	s.m[token] = cacheEntry{p: p, deadline: deadline, gen: gen}
	c.size.Add(1)
}

func (c *tokenCache) len() int { return int(c.size.Load()) }
