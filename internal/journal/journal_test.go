package journal

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

func env(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

var underJournal = env(map[string]string{"JOURNAL_STREAM": "8:12345"})

func TestPrefixByLevel(t *testing.T) {
	tests := []struct {
		level slog.Level
		want  string
	}{
		{slog.LevelError + 4, "<3>"},
		{slog.LevelError, "<3>"},
		{slog.LevelWarn + 2, "<4>"},
		{slog.LevelWarn, "<4>"},
		{slog.LevelInfo + 1, "<6>"},
		{slog.LevelInfo, "<6>"},
		{slog.LevelDebug + 2, "<7>"},
		{slog.LevelDebug, "<7>"},
		{slog.LevelDebug - 4, "<7>"},
	}
	for _, tt := range tests {
		t.Run(tt.level.String(), func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(NewHandler(&buf, underJournal, slog.LevelDebug-4))
			log.Log(t.Context(), tt.level, "deploy done", "service", "myapp")

			want := tt.want + "level=" + tt.level.String() + " msg=\"deploy done\" service=myapp\n"
			if got := buf.String(); got != want {
				t.Errorf("level %v wrote %q, want %q", tt.level, got, want)
			}
		})
	}
}

func TestNoPrefixOutsideJournal(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewHandler(&buf, env(nil), nil))
	log.Error("boom", "err", "x")
	log.Debug("hidden at the default level")

	got := buf.String()
	if !regexp.MustCompile(`^time=\S+ level=ERROR msg=boom err=x\n$`).MatchString(got) {
		t.Errorf("wrote %q, want one plain text line with time=", got)
	}
}

func TestLevelFilter(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewHandler(&buf, underJournal, slog.LevelWarn))
	log.Info("dropped")
	log.Warn("kept")
	if got, want := buf.String(), "<4>level=WARN msg=kept\n"; got != want {
		t.Errorf("wrote %q, want %q", got, want)
	}
}

func TestAttrsAndGroups(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewHandler(&buf, underJournal, nil))
	log.With("service", "myapp").WithGroup("deploy").Warn("rolled back", "digest", "sha256:ab")
	want := "<4>level=WARN msg=\"rolled back\" service=myapp deploy.digest=sha256:ab\n"
	if got := buf.String(); got != want {
		t.Errorf("wrote %q, want %q", got, want)
	}
}

// A message with a newline must still be one line with one prefix:
// journald would otherwise log the continuation at the default priority.
func TestOneLinePerRecord(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewHandler(&buf, underJournal, nil))
	log.Error("compose failed:\nline two", "output", "a\nb")
	got := buf.String()
	if strings.Count(got, "\n") != 1 || strings.Count(got, "<3>") != 1 || !strings.HasPrefix(got, "<3>") {
		t.Errorf("wrote %q, want exactly one <3>-prefixed line", got)
	}
}

func TestPrefixWriterPrefixesEveryLine(t *testing.T) {
	var buf bytes.Buffer
	pw := &prefixWriter{mu: new(sync.Mutex), w: &buf, prefix: []byte("<6>")}
	in := "a\nb\nc"
	n, err := pw.Write([]byte(in))
	if err != nil || n != len(in) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(in))
	}
	if got, want := buf.String(), "<6>a\n<6>b\n<6>c"; got != want {
		t.Errorf("wrote %q, want %q", got, want)
	}
}

func TestConcurrentLinesDoNotInterleave(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(NewHandler(&buf, underJournal, slog.LevelDebug))
	const goroutines, perG = 8, 200
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			log := base.With("g", g) // derived handlers share the lock
			for i := range perG {
				switch i % 4 {
				case 0:
					log.Error("e", "i", i)
				case 1:
					log.Warn("w", "i", i)
				case 2:
					log.Info("i", "i", i)
				default:
					log.Debug("d", "i", i)
				}
			}
		})
	}
	wg.Wait()

	line := regexp.MustCompile(`^<(\d)>level=(\w+) msg=\w g=\d+ i=\d+$`)
	prio := map[string]string{"ERROR": "3", "WARN": "4", "INFO": "6", "DEBUG": "7"}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != goroutines*perG {
		t.Fatalf("got %d lines, want %d", len(lines), goroutines*perG)
	}
	for _, l := range lines {
		m := line.FindStringSubmatch(l)
		if m == nil || prio[m[2]] != m[1] {
			t.Fatalf("malformed or mis-prefixed line %q", l)
		}
	}
}

// JOURNAL_STREAM names the stream by device and inode; an inherited value
// that does not match the actual *os.File must not add prefixes.
func TestJournalStreamMustMatchFile(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dev, ino, ok := fileID(f)
	if !ok {
		t.Skip("no device/inode numbers on this platform")
	}

	tests := []struct {
		name, stream string
		wantPrefix   bool
	}{
		{"matching", fmt.Sprintf("%d:%d", dev, ino), true},
		{"other inode", fmt.Sprintf("%d:%d", dev, ino+1), false},
		{"malformed", "garbage", false},
		{"unset", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := f.Truncate(0); err != nil {
				t.Fatal(err)
			}
			if _, err := f.Seek(0, 0); err != nil {
				t.Fatal(err)
			}
			log := slog.New(NewHandler(f, env(map[string]string{"JOURNAL_STREAM": tt.stream}), nil))
			log.Info("hello")
			data, err := os.ReadFile(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			got := string(data)
			if hasPrefix := strings.HasPrefix(got, "<6>"); hasPrefix != tt.wantPrefix {
				t.Errorf("JOURNAL_STREAM=%q wrote %q, want prefix %v", tt.stream, got, tt.wantPrefix)
			}
			if hasTime := strings.Contains(got, "time="); hasTime == tt.wantPrefix {
				t.Errorf("JOURNAL_STREAM=%q wrote %q, want time= only without the journal", tt.stream, got)
			}
		})
	}
}

func TestWriter(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dev, ino, ok := fileID(f)
	if !ok {
		t.Skip("no device/inode numbers on this platform")
	}
	stream := fmt.Sprintf("%d:%d", dev, ino)
	const text = "dockward: config x: invalid config:\n  services[0].compose_file: must be absolute\n"
	tests := []struct {
		name   string
		stream string
		level  slog.Level
		want   string
	}{
		{"error", stream, slog.LevelError, "<3>dockward: config x: invalid config:\n<3>  services[0].compose_file: must be absolute\n"},
		{"warning", stream, slog.LevelWarn, "<4>dockward: config x: invalid config:\n<4>  services[0].compose_file: must be absolute\n"},
		{"another stream", fmt.Sprintf("%d:%d", dev, ino+1), slog.LevelError, text},
		{"no journal", "", slog.LevelError, text},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := f.Truncate(0); err != nil {
				t.Fatal(err)
			}
			if _, err := f.Seek(0, 0); err != nil {
				t.Fatal(err)
			}
			if _, err := fmt.Fprint(Writer(f, env(map[string]string{"JOURNAL_STREAM": tt.stream}), tt.level), text); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("Writer(JOURNAL_STREAM=%q, %v) wrote %q, want %q", tt.stream, tt.level, got, tt.want)
			}
		})
	}
}
