package storage

// groupSlab hands out the room of the keys and values a commit group writes to Badger. Badger
// copies them into its memtable (or its value log) when the group is applied, which
// CommitInline does on the committer's goroutine before the next group begins: so the next
// group writes over them, and a queue entry (its event inline, a few hundred bytes) costs no
// allocation of its own. Only the committer uses it.
type groupSlab struct {
	chunks [][]byte // chunks[:used+1] hold this group's bytes
	used   int      // index of the chunk being filled
}

const (
	slabChunk = 64 << 10 // bytes per chunk
	slabOwn   = 8 << 10  // a value larger than this gets an allocation of its own
	slabKeep  = 4        // chunks kept from one group to the next (the rest go to the collector)
)

// take returns an empty slice with room for n bytes (appending more reallocates it).
func (a *groupSlab) take(n int) []byte {
	if n > slabOwn {
		return make([]byte, 0, n)
	}
	for {
		if a.used == len(a.chunks) {
			a.chunks = append(a.chunks, make([]byte, 0, slabChunk))
		}
		c := a.chunks[a.used]
		if l := len(c); cap(c)-l >= n {
			a.chunks[a.used] = c[:l+n]
			return c[l : l : l+n]
		}
		a.used++
	}
}

// reset makes all the room free again: call it only once Badger has the group's writes (or the
// group was dropped).
func (a *groupSlab) reset() {
	if len(a.chunks) > slabKeep {
		clear(a.chunks[slabKeep:])
		a.chunks = a.chunks[:slabKeep]
	}
	for i := range a.chunks {
		a.chunks[i] = a.chunks[i][:0]
	}
	a.used = 0
}
