package schemas

// internSet keeps one copy of each short string it is asked for, so that the
// strings that repeat from one record to the next (attribute names and
// values, metric names) are allocated once; its zero value is ready to use,
// and a nil *internSet copies every time.
type internSet struct {
	m map[string]string
}

// maxKeptStrings and maxKeptStringLen bound what an internSet keeps: a
// stream of distinct strings costs it a few hundred KiB at most.
const (
	maxKeptStrings   = 4096
	maxKeptStringLen = 64
)

// get is b as a string, the set's copy if it has one.
func (ss *internSet) get(b []byte) string {
	if ss == nil {
		return string(b)
	}
	if s, ok := ss.m[string(b)]; ok { // no allocation to look up
		return s
	}
	s := string(b)
	if len(s) <= maxKeptStringLen && len(ss.m) < maxKeptStrings {
		if ss.m == nil {
			ss.m = map[string]string{}
		}
		ss.m[s] = s
	}
	return s
}
