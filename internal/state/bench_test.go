package state

import (
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkUpdate measures one durable state change (write, fsync, rename,
// fsync of the directory), paid once per block, heal restart and deploy.
func BenchmarkUpdate(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "state.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		err := s.Update("svc", func(st *Service) {
			st.Heal.Consecutive = i
			st.Heal.LastRestart = time.Unix(int64(i), 0)
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}
