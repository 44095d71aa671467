package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A machine is a Debian system booted with systemd-nspawn, with its own
// systemd and journal, on which dockward is installed the way the README
// says. It shares the host's network (the loopback registry and dockward's
// API are the host's) and talks to the host's Docker engine through its
// bind-mounted socket. .ci/rootfs builds the root file system once; each
// machine boots an overlay of it, so machines never see each other's files.

// The cached root file system (.ci/rootfs, run by make deps).
const (
	defaultRootfs = "/var/cache/dockward-test/rootfs"
	rootfsStamp   = "etc/dockward-test-rootfs"
)

// machineEnv is the environment of commands run inside a machine.
var machineEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "TERM=dumb",
}

type machine struct {
	t       *testing.T
	name    string
	root    string // host path of the machine's "/": an overlay on the cached root
	leader  int    // host PID of the machine's systemd
	nspawn  *exec.Cmd
	exited  chan struct{}
	console *syncBuffer
}

// bind is a host path made visible in the machine.
type bind struct {
	host, machine string
	readOnly      bool
}

// bootMachine boots a machine and waits until its systemd has finished
// booting. The machine is killed and its overlay removed at cleanup.
func bootMachine(t *testing.T, binds ...bind) *machine {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the systemd tests boot a machine with systemd-nspawn and need root (CI runs make test as root)")
	}
	nspawn, err := exec.LookPath("systemd-nspawn")
	if err != nil {
		t.Fatal("systemd-nspawn not found: install the Debian package systemd-container (make deps does)")
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Fatal("nsenter not found: install the Debian package util-linux")
	}
	lower := os.Getenv("DOCKWARD_TEST_ROOTFS")
	if lower == "" {
		lower = defaultRootfs
	}
	if _, err := os.Stat(filepath.Join(lower, rootfsStamp)); err != nil {
		t.Fatalf("no root file system for the machine at %s (%v): build it with .ci/rootfs (make deps does)", lower, err)
	}

	m := &machine{
		t: t,
		// Named after this process: see reapStale.
		name:    fmt.Sprintf("dwe2e-%d-%04x", os.Getpid(), rand.N(1<<16)),
		exited:  make(chan struct{}),
		console: &syncBuffer{},
	}
	dir := t.TempDir()
	m.root = filepath.Join(dir, "root")
	for _, d := range []string{"upper", "work", "root"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, filepath.Join(dir, "upper"), filepath.Join(dir, "work"))
	if err := syscall.Mount("overlay", m.root, "overlay", 0, opts); err != nil {
		t.Fatalf("mount the machine's overlay: %v", err)
	}
	t.Cleanup(func() {
		// A lazy unmount: the kernel may still hold the killed machine's
		// mount namespace for a moment.
		if err := syscall.Unmount(m.root, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", m.root, err)
		}
	})

	procs := ownCgroup(t, m.name)
	args := []string{nspawn, "--quiet", "--register=no", "--keep-unit", "--boot",
		"--directory=" + m.root, "--machine=" + m.name}
	for _, b := range binds {
		opt := "--bind="
		if b.readOnly {
			opt = "--bind-ro="
		}
		args = append(args, opt+b.host+":"+b.machine)
	}
	// Into its own cgroup first (see ownCgroup), then nspawn.
	m.nspawn = exec.Command("/bin/sh", append([]string{"-c", `for f in $CGROUP_PROCS; do echo $$ >"$f" || exit 1; done; exec "$@"`, "sh"}, args...)...)
	m.nspawn.Env = append(os.Environ(), "CGROUP_PROCS="+strings.Join(procs, " "))
	m.nspawn.Stdout = m.console
	m.nspawn.Stderr = m.console
	m.nspawn.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	booted := time.Now()
	if err := m.nspawn.Start(); err != nil {
		t.Fatalf("start systemd-nspawn: %v", err)
	}
	go func() {
		m.nspawn.Wait()
		close(m.exited)
	}()
	t.Cleanup(m.kill)

	m.waitFor(60*time.Second, "the machine's systemd to start", func() (bool, string) {
		select {
		case <-m.exited:
			t.Fatalf("systemd-nspawn exited during boot: %v\n%s", m.nspawn.ProcessState, m.console.String())
		default:
		}
		m.leader = childOf(m.nspawn.Process.Pid, "systemd")
		return m.leader > 0, "systemd-nspawn has not started systemd yet"
	})
	// systemctl fails until systemd listens on its private socket.
	var st string
	m.waitFor(60*time.Second, "the machine to boot", func() (bool, string) {
		out, err := m.exec("systemctl", "is-system-running", "--wait")
		st = strings.TrimSpace(out)
		return st == "running" || st == "degraded", fmt.Sprintf("is-system-running = %q (%v)\n%s", st, err, m.console.String())
	})
	t.Logf("machine %s booted in %v (%s)", m.name, time.Since(booted).Round(time.Millisecond), st)
	return m
}

// kill ends the machine: SIGKILL to its init ends every process in it.
func (m *machine) kill() {
	if m.t.Failed() {
		out, _ := m.exec("journalctl", "--no-pager", "-o", "short-monotonic", "-u", "dockward")
		m.t.Logf("journal of dockward.service in machine %s:\n%s", m.name, out)
	}
	if m.leader > 0 {
		syscall.Kill(m.leader, syscall.SIGKILL)
	}
	select {
	case <-m.exited:
	case <-time.After(30 * time.Second):
		m.nspawn.Process.Kill()
		<-m.exited
	}
}

// childOf returns the PID of a child of pid named comm, or 0.
func childOf(pid int, comm string) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces.
		fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) && string(b[bytes.IndexByte(b, '(')+1:bytes.LastIndexByte(b, ')')]) == comm {
			return child
		}
	}
	return 0
}

// ownCgroup makes an empty cgroup for one machine in each hierarchy that
// systemd-nspawn uses (the unified one and, on a hybrid host, the legacy
// name=systemd one) and returns their cgroup.procs files. With --keep-unit
// nspawn puts the machine below its own cgroup: machines started from one
// cgroup would share their systemd's cgroup tree. Removed at cleanup.
func ownCgroup(t *testing.T, name string) []string {
	t.Helper()
	mounts := map[string]string{} // "" for the unified hierarchy, "name=systemd"
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(mi)) {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 || f[3] != "/" {
			continue
		}
		switch {
		case g[0] == "cgroup2":
			mounts[""] = f[4]
		case g[0] == "cgroup" && strings.Contains(","+g[2]+",", ",name=systemd,"):
			mounts["name=systemd"] = f[4]
		}
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var procs []string
	for line := range strings.Lines(string(self)) {
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 {
			continue
		}
		mount, ok := mounts[parts[1]]
		if !ok {
			continue
		}
		base := filepath.Join(mount, parts[2])
		reapStale(t, base)
		dir := filepath.Join(base, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatalf("create a cgroup for the machine: %v", err)
		}
		t.Cleanup(func() { removeCgroup(t, dir) })
		procs = append(procs, filepath.Join(dir, "cgroup.procs"))
	}
	if len(procs) == 0 {
		t.Fatalf("no cgroup hierarchy for systemd-nspawn found in /proc/self/mountinfo and /proc/self/cgroup")
	}
	return procs
}

// reapStale ends the machines in base that a test process left behind
// when it died without running its cleanups (a -timeout panic): killing
// systemd-nspawn does not end the machine. A machine's cgroup is named
// dwe2e-<PID of its test process>-<random>.
func reapStale(t *testing.T, base string) {
	entries, err := os.ReadDir(base)
	if err != nil {
		return
	}
	for _, e := range entries {
		var pid, n int
		if _, err := fmt.Sscanf(e.Name(), "dwe2e-%d-%x", &pid, &n); err != nil || !e.IsDir() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // its test still runs
		}
		dir := filepath.Join(base, e.Name())
		t.Logf("ending machine %s, left behind by test process %d", dir, pid)
		filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(path)
			for _, f := range strings.Fields(string(b)) {
				if p, err := strconv.Atoi(f); err == nil {
					syscall.Kill(p, syscall.SIGKILL)
				}
			}
			return nil
		})
		removeCgroup(t, dir)
	}
}

// removeCgroup removes a cgroup and the ones the machine's systemd made
// below it, deepest first, once their processes are gone.
func removeCgroup(t *testing.T, dir string) {
	var dirs []string
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	deadline := time.Now().Add(20 * time.Second)
	for i := len(dirs) - 1; i >= 0; i-- {
		for {
			err := syscall.Rmdir(dirs[i])
			if err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("remove cgroup %s: %v", dirs[i], err)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// exec runs a command inside the machine, in all of its namespaces, and
// returns its combined output.
func (m *machine) exec(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(m.leader), "-a", "--"}, args...)...)
	cmd.Env = machineEnv
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must is exec that fails the test on error.
func (m *machine) must(args ...string) string {
	m.t.Helper()
	out, err := m.exec(args...)
	if err != nil {
		m.t.Fatalf("in machine %s: %s: %v\n%s", m.name, strings.Join(args, " "), err, out)
	}
	return out
}

// show returns properties of dockward.service.
func (m *machine) show(props ...string) map[string]string {
	m.t.Helper()
	args := []string{"systemctl", "show", "dockward"}
	for _, p := range props {
		args = append(args, "-p", p)
	}
	got := map[string]string{}
	for line := range strings.Lines(m.must(args...)) {
		if k, v, ok := strings.Cut(strings.TrimRight(line, "\n"), "="); ok {
			got[k] = v
		}
	}
	return got
}

// path is the host path of a path inside the machine.
func (m *machine) path(p string) string { return filepath.Join(m.root, p) }

func (m *machine) writeFile(p string, data []byte, mode os.FileMode) {
	m.t.Helper()
	if err := os.MkdirAll(filepath.Dir(m.path(p)), 0o755); err != nil {
		m.t.Fatal(err)
	}
	if err := os.WriteFile(m.path(p), data, mode); err != nil {
		m.t.Fatal(err)
	}
}

// journalEntry is one record of `journalctl -o json`.
type journalEntry struct {
	Message    string
	Priority   int
	Identifier string // SYSLOG_IDENTIFIER: dockward, or systemd for the manager's own lines
	Monotonic  int64  // µs
}

// journal returns the records of dockward.service, with extra journalctl
// arguments (such as -p err).
func (m *machine) journal(args ...string) []journalEntry {
	m.t.Helper()
	// journald may not have written the last lines yet.
	m.must("journalctl", "--sync")
	out := m.must(append([]string{"journalctl", "--no-pager", "-o", "json", "-u", "dockward"}, args...)...)
	var entries []journalEntry
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var raw map[string]any
		if err := json.Unmarshal(sc.Bytes(), &raw); err != nil {
			m.t.Fatalf("journalctl -o json line %q: %v", sc.Text(), err)
		}
		e := journalEntry{Identifier: fmt.Sprint(raw["SYSLOG_IDENTIFIER"])}
		switch msg := raw["MESSAGE"].(type) {
		case string:
			e.Message = msg
		case []any: // not valid UTF-8: an array of bytes
			var b []byte
			for _, c := range msg {
				if f, ok := c.(float64); ok {
					b = append(b, byte(f))
				}
			}
			e.Message = string(b)
		}
		e.Priority, _ = strconv.Atoi(fmt.Sprint(raw["PRIORITY"]))
		e.Monotonic, _ = strconv.ParseInt(fmt.Sprint(raw["__MONOTONIC_TIMESTAMP"]), 10, 64)
		entries = append(entries, e)
	}
	return entries
}

// journalText is the journal of dockward.service as a person reads it.
func (m *machine) journalText() string {
	out, _ := m.exec("journalctl", "--no-pager", "-o", "short-monotonic", "-u", "dockward")
	return out
}

// waitFor polls cond until it holds or the timeout passes; on a timeout the
// failure shows dockward's journal.
func (m *machine) waitFor(timeout time.Duration, what string, cond func() (bool, string)) {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("timed out after %v waiting for %s: %s", timeout, what, detail)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// makeInstall is serialised: make builds bin/dockward in the checkout.
var makeInstall sync.Mutex

// install runs `make build && make install DESTDIR=<the machine's root>`,
// the README's "Install by hand".
func (m *machine) install() {
	m.t.Helper()
	makeInstall.Lock()
	defer makeInstall.Unlock()
	root, err := filepath.Abs("../..")
	if err != nil {
		m.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, args := range [][]string{{"build"}, {"install", "DESTDIR=" + m.root}} {
		cmd := exec.CommandContext(ctx, "make", append([]string{"-C", root}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			m.t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
