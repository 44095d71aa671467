package notifytest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// python is the interpreter that has aiosmtpd (Debian's python3-aiosmtpd).
// It is named explicitly: a python3 earlier on PATH (pyenv) may lack it.
const python = "/usr/bin/python3"

// Message is one mail the SMTP server received.
type Message struct {
	From    string   // envelope sender (MAIL FROM)
	To      []string // envelope recipients (RCPT TO)
	Header  mail.Header
	Subject string // decoded
	// Body is decoded according to Content-Transfer-Encoding, with line
	// ends as \n.
	Body string
	Raw  []byte
}

// Cert is a self-signed certificate for 127.0.0.1, ::1 and localhost.
type Cert struct {
	CertPEM []byte
	KeyPEM  []byte
	Pool    *x509.CertPool // trusts exactly this certificate
}

// NewCert makes a self-signed certificate valid for a day.
func NewCert(t testing.TB) Cert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate key: %v", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatalf("generate serial: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "notifytest"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("create certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parse certificate: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("marshal key: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return Cert{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		Pool:    pool,
	}
}

// SMTPOption configures StartSMTP.
type SMTPOption func(*smtpConfig)

type smtpConfig struct {
	starttls *Cert
	implicit *Cert
}

// WithSTARTTLS makes the server offer STARTTLS with c and refuse mail
// until the client has used it.
func WithSTARTTLS(c Cert) SMTPOption { return func(s *smtpConfig) { s.starttls = &c } }

// WithImplicitTLS makes the server speak TLS from the first byte (SMTPS).
func WithImplicitTLS(c Cert) SMTPOption { return func(s *smtpConfig) { s.implicit = &c } }

// StartSMTP runs a real SMTP server, aiosmtpd, on 127.0.0.1 and a free
// port, storing mail in a Maildir. messages returns what it has received,
// oldest first. Without options it offers neither TLS nor AUTH. The test
// fails if /usr/bin/python3 lacks aiosmtpd.
func StartSMTP(t testing.TB, opts ...SMTPOption) (host string, port int, messages func() []Message) {
	t.Helper()
	var cfg smtpConfig
	for _, o := range opts {
		o(&cfg)
	}
	if out, err := exec.Command(python, "-c", "import aiosmtpd").CombinedOutput(); err != nil {
		t.Fatalf("the SMTP tests need aiosmtpd for %s (%v: %s); install it: apt-get install python3-aiosmtpd",
			python, err, bytes.TrimSpace(out))
	}
	dir := t.TempDir()
	maildir := filepath.Join(dir, "Maildir")
	port = freePort(t)
	host = "127.0.0.1"
	args := []string{"-m", "aiosmtpd", "-n", "-l", net.JoinHostPort(host, strconv.Itoa(port))}
	writeCert := func(c *Cert, certFlag, keyFlag string) {
		certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		if err := os.WriteFile(certFile, c.CertPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, c.KeyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, certFlag, certFile, keyFlag, keyFile)
	}
	if cfg.starttls != nil {
		writeCert(cfg.starttls, "--tlscert", "--tlskey")
	}
	if cfg.implicit != nil {
		writeCert(cfg.implicit, "--smtpscert", "--smtpskey")
	}
	args = append(args, "-c", "aiosmtpd.handlers.Mailbox", maildir)

	var out lockedBuffer
	cmd := exec.Command(python, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start aiosmtpd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})

	// Ready when it accepts connections.
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	deadline := time.NewTimer(WaitTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			break
		}
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			t.Fatalf("aiosmtpd exited before listening on %s (%v):\n%s", addr, err, out.String())
		case <-deadline.C:
			t.Fatalf("aiosmtpd did not listen on %s within %s:\n%s", addr, WaitTimeout, out.String())
		case <-tick.C:
		}
	}

	messages = func() []Message {
		msgs, err := readMaildir(maildir)
		if err != nil {
			t.Errorf("read aiosmtpd's Maildir: %v", err)
		}
		return msgs
	}
	return host, port, messages
}

// WaitMessages waits until messages returns at least n messages and
// returns them; it fails t after WaitTimeout.
func WaitMessages(t testing.TB, messages func() []Message, n int) []Message {
	t.Helper()
	var got []Message
	waitFor(t, strconv.Itoa(n)+" mail(s)", func() bool {
		got = messages()
		return len(got) >= n
	})
	return got
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// readMaildir parses the delivered messages, oldest first.
func readMaildir(dir string) ([]Message, error) {
	type file struct {
		path string
		mod  time.Time
	}
	var files []file
	for _, sub := range []string{"new", "cur"} {
		entries, err := os.ReadDir(filepath.Join(dir, sub))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			info, err := e.Info()
			if err != nil {
				return nil, err
			}
			files = append(files, file{filepath.Join(dir, sub, e.Name()), info.ModTime()})
		}
	}
	slices.SortFunc(files, func(a, b file) int {
		if c := a.mod.Compare(b.mod); c != 0 {
			return c
		}
		return strings.Compare(a.path, b.path)
	})
	var msgs []Message
	for _, f := range files {
		raw, err := os.ReadFile(f.path)
		if err != nil {
			return nil, err
		}
		m, err := parseMessage(raw)
		if err != nil {
			return nil, errors.New(f.path + ": " + err.Error())
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

func parseMessage(raw []byte) (Message, error) {
	pm, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return Message{}, err
	}
	m := Message{Header: pm.Header, Raw: raw, From: pm.Header.Get("X-MailFrom")}
	for _, to := range strings.Split(pm.Header.Get("X-RcptTo"), ",") {
		if to = strings.TrimSpace(to); to != "" {
			m.To = append(m.To, to)
		}
	}
	dec := new(mime.WordDecoder)
	if m.Subject, err = dec.DecodeHeader(pm.Header.Get("Subject")); err != nil {
		return m, err
	}
	var body io.Reader = pm.Body
	switch strings.ToLower(pm.Header.Get("Content-Transfer-Encoding")) {
	case "quoted-printable":
		body = quotedprintable.NewReader(body)
	case "base64":
		body = base64.NewDecoder(base64.StdEncoding, body)
	}
	b, err := io.ReadAll(body)
	if err != nil {
		return m, err
	}
	m.Body = strings.ReplaceAll(string(b), "\r\n", "\n")
	return m, nil
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
