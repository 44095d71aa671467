// Command testapp is the service that the end-to-end tests deploy. It is
// built once, statically, and baked into FROM scratch images whose
// environment picks its behaviour:
//
//	APP_MODE=healthy    runs; its healthcheck passes
//	APP_MODE=unhealthy  runs; its healthcheck fails
//	APP_MODE=crash      exits with code 3 after APP_CRASH_AFTER (default 300ms)
//
// APP_HEALTHY_AFTER (a duration) makes the healthcheck of a healthy app fail
// until the app has run that long, every time it starts.
//
// `testapp -check` is the image's healthcheck. `testapp -sick` (run with
// docker exec) makes a healthy container turn unhealthy until it restarts;
// `testapp -crash` makes it exit with code 3.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const (
	sickFile    = "/tmp/sick"
	crashFile   = "/tmp/crash"
	startedFile = "/tmp/started" // when the app started, RFC 3339
)

func main() {
	check := flag.Bool("check", false, "run the healthcheck")
	sick := flag.Bool("sick", false, "make the running app unhealthy")
	crash := flag.Bool("crash", false, "make the running app exit with code 3")
	flag.Parse()
	mode := os.Getenv("APP_MODE")
	switch {
	case *check:
		os.Exit(healthcheck(mode))
	case *sick, *crash:
		file := sickFile
		if *crash {
			file = crashFile
		}
		if err := os.WriteFile(file, []byte("1\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	// A restart starts healthy again: that is what a heal restart fixes.
	os.MkdirAll("/tmp", 0o1777)
	os.Remove(sickFile)
	os.Remove(crashFile)
	os.WriteFile(startedFile, []byte(time.Now().Format(time.RFC3339Nano)), 0o644)
	fmt.Printf("testapp starting in mode %q\n", mode)
	if mode == "crash" {
		after, err := time.ParseDuration(os.Getenv("APP_CRASH_AFTER"))
		if err != nil {
			after = 300 * time.Millisecond
		}
		time.Sleep(after)
		fmt.Fprintln(os.Stderr, "fatal: cannot open /etc/app/config.yml: no such file or directory")
		os.Exit(3)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(100 * time.Millisecond)
	for {
		select {
		case <-sig:
			fmt.Println("testapp stopping")
			return
		case <-tick.C:
			if _, err := os.Stat(crashFile); err == nil {
				fmt.Fprintln(os.Stderr, "panic: runtime error: invalid memory address or nil pointer dereference")
				os.Exit(3)
			}
		}
	}
}

func healthcheck(mode string) int {
	if mode == "unhealthy" {
		fmt.Println(`GET /healthz: 503 "database connection refused"`)
		return 1
	}
	if after, err := time.ParseDuration(os.Getenv("APP_HEALTHY_AFTER")); err == nil {
		b, _ := os.ReadFile(startedFile)
		if started, err := time.Parse(time.RFC3339Nano, string(b)); err != nil || time.Since(started) < after {
			fmt.Println("GET /healthz: 503 warming up")
			return 1
		}
	}
	if _, err := os.Stat(sickFile); err == nil {
		fmt.Println("GET /healthz: 500 worker pool exhausted")
		return 1
	}
	fmt.Println("GET /healthz: 200 ok")
	return 0
}
