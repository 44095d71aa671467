package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// 1,000 concurrent requests over every route, on loopback, each answer one
// that the route means (409 busy and 404 unknown included, nothing else),
// and afterwards as many goroutines and file descriptors as before.
func TestAPILoad(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "apiload")
	s.pollInterval = 3600
	s.registryCfg = map[string]any{"events_token": eventsToken}
	s.push(healthyImage)
	s.up()
	s.start()
	// Warm: the registry connection and a check, as in steady use.
	if r := s.trigger(); r.Outcome != "up_to_date" {
		t.Fatalf("trigger = %+v, want up_to_date", r)
	}
	pid := s.proc.cmd.Process.Pid
	fds0, threads0, gr0 := fdCount(t, pid), threadCount(t, pid), s.metric("go_goroutines")
	t.Logf("before: %d fds, %d threads, %v goroutines", fds0, threads0, gr0)

	envelope := `{"events": [{"action": "pull", "target": {"repository": "` + s.repo + `", "tag": "latest"}}]}`
	type call struct {
		method, path, body string
		ok                 []int
	}
	calls := []call{
		{"GET", "/health", "", []int{200}},
		{"HEAD", "/health", "", []int{200}},
		{"GET", "/metrics", "", []int{200}},
		{"GET", "/status", "", []int{200}},
		{"GET", "/", "", []int{200}},
		{"GET", "/blocked", "", []int{200}},
		{"POST", "/trigger/" + s.name, "", []int{202, 409}},
		{"POST", "/trigger/" + s.name + "?wait=true", "", []int{200, 409}},
		{"POST", "/trigger", "", []int{202}},
		{"DELETE", "/blocked/" + s.name, "", []int{200}},
		{"POST", "/trigger/nosuch", "", []int{404}},
		{"DELETE", "/blocked/nosuch", "", []int{404}},
		{"GET", "/nosuch", "", []int{404}},
		{"POST", "/registry/events", envelope, []int{200}},
	}
	const n = 1000
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 100}, Timeout: 60 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var mu sync.Mutex
	bad := map[string]int{}
	codes := map[int]int{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	began := time.Now()
	for i := range n {
		c := calls[i%len(calls)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			code, err := loadRequest(ctx, client, s.api, c.method, c.path, c.body)
			mu.Lock()
			defer mu.Unlock()
			codes[code]++
			if err != nil {
				bad[fmt.Sprintf("%s %s: %v", c.method, c.path, err)]++
				return
			}
			for _, ok := range c.ok {
				if code == ok {
					return
				}
			}
			bad[fmt.Sprintf("%s %s: %d", c.method, c.path, code)]++
		}()
	}
	close(start)
	wg.Wait()
	took := time.Since(began)
	t.Logf("%d requests in %v; status codes %v", n, took.Round(time.Millisecond), codes)
	for what, k := range bad {
		t.Errorf("%d× %s", k, what)
	}
	if took > 60*time.Second {
		t.Errorf("%d requests took %v, want under 60s", n, took)
	}
	if exited, err := s.proc.exited(); exited {
		t.Fatalf("dockward exited under load: %v\n%s", err, s.proc.logs())
	}

	// Afterwards: the client hangs up; the server's connections and the
	// checks the triggers started end.
	client.CloseIdleConnections()
	var fds, threads int
	var gr float64
	s.waitFor(60*time.Second, "goroutines and file descriptors back to their count before the load", func() (bool, string) {
		fds, threads, gr = fdCount(t, pid), threadCount(t, pid), s.metric("go_goroutines")
		// A scrape's own connection is one fd and two goroutines; the
		// registry client may hold one more idle connection.
		return fds <= fds0+2 && gr <= gr0+4, fmt.Sprintf("%d fds (before %d), %v goroutines (before %v)", fds, fds0, gr, gr0)
	})
	t.Logf("after: %d fds, %d threads, %v goroutines", fds, threads, gr)
	if code, _ := s.request("GET", "/health"); code != 200 {
		t.Errorf("GET /health after the load = %d", code)
	}
}

func loadRequest(ctx context.Context, client *http.Client, base, method, path, body string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, base+path, strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	if path == "/registry/events" {
		req.Header.Set("Authorization", "Bearer "+eventsToken)
		req.Header.Set("Content-Type", eventsMediaType)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

// fdCount is the number of open file descriptors of a process.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// threadCount is the number of threads of a process.
func threadCount(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads: line")
	return 0
}
