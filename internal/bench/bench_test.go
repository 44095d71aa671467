// Package bench measures the built dockward binary against the real Docker
// engine and a real registry: the cost of a poll cycle as the number of
// services grows, its idle cost, and how fast it deploys a good push and
// undoes a bad one, each beside the floor measured in the same run.
//
// `go test ./internal/bench` runs a small smoke version so that the
// benchmark cannot rot; `make bench` runs the full one and writes JSON:
//
//	go test -count=1 -timeout 60m -run TestBench -v ./internal/bench -args -dockward.full -dockward.out=bench.json
package bench

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	full    = flag.Bool("dockward.full", false, "run the full benchmark (20, 100 and 300 services, several rounds) instead of the smoke run")
	outPath = flag.String("dockward.out", "", "write the results as JSON to this file")
	only    = flag.Int("dockward.services", 0, "measure the poll cycle with this many services only (and skip the latency part)")
)

// Built once by TestMain.
var (
	dockwardBin string
	testappBin  string
	binarySize  int64
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	flag.Parse()
	if out, err := exec.Command("docker", "version", "--format", "{{.Server.APIVersion}}").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: the benchmark needs a running Docker engine (docker version: %v)\n%s", err, out)
		return 1
	}
	dir, err := os.MkdirTemp("", "dockward-bench-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	dockwardBin = filepath.Join(dir, "dockward")
	testappBin = filepath.Join(dir, "app")
	// The release build, as `make build` makes it.
	for _, b := range []struct {
		out, pkg string
		flags    []string
	}{
		{dockwardBin, "../../cmd/dockward", []string{"-trimpath", "-tags", "nethttpomithttp2", "-ldflags", "-s -w -X main.version=bench"}},
		{testappBin, "../e2e/testapp", nil},
	} {
		args := append([]string{"build", "-o", b.out}, b.flags...)
		cmd := exec.Command("go", append(args, b.pkg)...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: build %s: %v\n%s", b.pkg, err, out)
			return 1
		}
	}
	st, err := os.Stat(dockwardBin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	binarySize = st.Size()
	return m.Run()
}

// Results is what `make bench` writes as JSON.
type Results struct {
	Date        string        `json:"date"`
	Full        bool          `json:"full"`
	BinaryBytes int64         `json:"binary_bytes"`
	Polls       []PollResult  `json:"polls"`
	Latency     LatencyResult `json:"latency"`
}

func TestBench(t *testing.T) {
	res := Results{Date: time.Now().UTC().Format(time.RFC3339), Full: *full, BinaryBytes: binarySize}
	sizes := []int{3}
	window := 4
	if *full {
		sizes = []int{20, 100, 300}
		window = 15
	}
	if *only > 0 {
		sizes = []int{*only}
	}
	for _, n := range sizes {
		t.Run(fmt.Sprintf("poll-%d", n), func(t *testing.T) {
			idle := 0 * time.Second
			if *full && n == 20 {
				idle = 3 * time.Minute
			}
			p := measurePoll(t, n, window, idle)
			res.Polls = append(res.Polls, p)
		})
	}
	t.Run("latency", func(t *testing.T) {
		if *only > 0 {
			t.Skip("-dockward.services measures the poll cycle only")
		}
		rounds := 1
		if *full {
			rounds = 5
		}
		res.Latency = measureLatency(t, rounds)
	})
	table := formatTable(res)
	fmt.Print(table)
	t.Log("\n" + table)
	if *outPath != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(*outPath, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The smoke run proves the harness works: every figure was measured.
	for _, p := range res.Polls {
		if p.Cycles == 0 || p.RegistryPerCycle == 0 || p.WallMedianMS == 0 {
			t.Errorf("poll with %d services: nothing measured: %+v", p.Services, p)
		}
	}
	if *only == 0 && (res.Latency.GoodRounds == 0 || res.Latency.BadRounds == 0) {
		t.Errorf("latency: no round measured: %+v", res.Latency)
	}
}

// cpuTicks reads the user and system time of pid in clock ticks (1/100 s).
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name is in parentheses and may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st, nil
}

// memoryKiB reads the resident set size of pid and its anonymous part:
// the rest is the binary's pages, shared with the page cache and given back
// under memory pressure.
func memoryKiB(pid int) (rss, anon int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "Rss":
			rss = n
		case "Anonymous":
			anon = n
		}
	}
	if rss == 0 {
		return 0, 0, fmt.Errorf("no Rss in /proc/%d/smaps_rollup", pid)
	}
	return rss, anon, sc.Err()
}

// dockerdPID finds the shared engine's process, for its CPU share.
func dockerdPID() int {
	b, err := os.ReadFile("/var/run/docker.pid")
	if err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			return pid
		}
	}
	out, err := exec.Command("pidof", "-s", "dockerd").Output()
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return pid
}
