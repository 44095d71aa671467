package state_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/state"
)

// A pending promotion alone keeps a service in the file, survives a
// restart, and Get hands out copies of it.
func TestPromotionIsKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	s := open(t, path)
	when := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	p := state.Promotion{Digest: badDigest, Tag: "stable", Verified: when, NotBefore: when.Add(2 * time.Minute)}
	if err := s.Update("web", func(svc *state.Service) { svc.Promotion = &p }); err != nil {
		t.Fatal(err)
	}
	s.Get("web").Promotion.Digest = "changed"
	again := open(t, path)
	if got := again.Get("web").Promotion; got == nil || *got != p {
		t.Fatalf("after reopen Get(web).Promotion = %+v, want %+v", got, p)
	}
	if err := again.Update("web", func(svc *state.Service) { svc.Promotion = nil }); err != nil {
		t.Fatal(err)
	}
	if _, ok := open(t, path).All()["web"]; ok {
		t.Error("a service without a promotion or anything else is still in the file")
	}
}
