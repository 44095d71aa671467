package notify

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/smtp"
	"strconv"
	"strings"
	"time"

	"github.com/dockward/dockward/internal/config"
)

// TLS modes for SMTP.
const (
	tlsImplicit = "implicit" // TLS from the first byte (SMTPS, port 465)
	tlsSTARTTLS = "starttls" // plain connect, then STARTTLS, which is required
	tlsNone     = "none"
)

type mailer struct {
	addr     string
	host     string
	mode     string
	from     string
	to       []string
	username string
	password string
	tls      *tls.Config
	helo     string // our name in HELO/EHLO and Message-ID
}

func newSMTP(c config.SMTP, o options) (*mailer, error) {
	const f = "notifications.smtp."
	mode := c.TLS
	if mode == "" {
		mode = tlsSTARTTLS
		if c.Port == 465 {
			mode = tlsImplicit
		}
	}
	switch mode {
	case tlsImplicit, tlsSTARTTLS, tlsNone:
	default:
		return nil, fmt.Errorf(f+"tls: must be starttls, implicit or none; got %q", c.TLS)
	}
	if c.Host == "" {
		return nil, errors.New(f + "host: is required")
	}
	if len(c.To) == 0 {
		return nil, errors.New(f + "to: must list at least one recipient")
	}
	for i, a := range append([]string{c.From}, c.To...) {
		if strings.ContainsAny(a, "\r\n<>") || !strings.Contains(a, "@") {
			field := "from"
			if i > 0 {
				field = fmt.Sprintf("to[%d]", i-1)
			}
			return nil, fmt.Errorf(f+"%s: must be a plain email address (user@example.com), got %q", field, a)
		}
	}
	if c.Username != "" && mode == tlsNone && !isLocalhost(c.Host) {
		return nil, fmt.Errorf(f+"tls: %q would send the password in clear to %s; use starttls or implicit", mode, c.Host)
	}
	return &mailer{
		addr:     net.JoinHostPort(c.Host, strconv.Itoa(c.Port)),
		host:     c.Host,
		mode:     mode,
		from:     c.From,
		to:       c.To,
		username: c.Username,
		password: c.Password,
		tls:      &tls.Config{ServerName: c.Host, RootCAs: o.rootCAs, MinVersion: tls.VersionTLS12},
		helo:     heloName(o.hostname),
	}, nil
}

// send delivers a in one SMTP session. ctx's deadline becomes the
// connection's deadline, and cancelling ctx aborts the session.
func (m *mailer) send(ctx context.Context, a Alert) error {
	msg := m.message(a)

	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "tcp", m.addr)
	if err != nil {
		return fmt.Errorf("smtp connect: %w", err)
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if m.mode == tlsImplicit {
		tc := tls.Client(conn, m.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fmt.Errorf("smtp tls handshake with %s: %w", m.addr, err)
		}
		conn = tc
	}
	c, err := smtp.NewClient(conn, m.host)
	if err != nil {
		return fmt.Errorf("smtp greeting from %s: %w", m.addr, err)
	}
	defer c.Close()
	if err := c.Hello(m.helo); err != nil {
		return fmt.Errorf("smtp hello: %w", err)
	}
	if m.mode == tlsSTARTTLS {
		if ok, _ := c.Extension("STARTTLS"); !ok {
			return permanent(fmt.Errorf("smtp server %s does not offer STARTTLS, which tls %q requires (set tls to \"none\" to send in clear)", m.addr, tlsSTARTTLS))
		}
		if err := c.StartTLS(m.tls); err != nil {
			return fmt.Errorf("smtp starttls: %w", err)
		}
	}
	if m.username != "" {
		if ok, _ := c.Extension("AUTH"); !ok {
			return permanent(fmt.Errorf("smtp server %s does not offer AUTH, but a username is configured", m.addr))
		}
		// PlainAuth refuses to send the password over a connection that is
		// neither TLS nor to localhost; newSMTP rejects that config.
		if err := c.Auth(smtp.PlainAuth("", m.username, m.password, m.host)); err != nil {
			return fmt.Errorf("smtp auth as %s: %w", m.username, err)
		}
	}
	if err := c.Mail(m.from); err != nil {
		return fmt.Errorf("smtp MAIL FROM %s: %w", m.from, err)
	}
	for _, to := range m.to {
		if err := c.Rcpt(to); err != nil {
			return fmt.Errorf("smtp RCPT TO %s: %w", to, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("smtp DATA: %w", err)
	}
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("smtp write message: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("smtp end of message: %w", err)
	}
	// The server has taken the message; a failed QUIT must not cause a
	// retry that would send it twice.
	_ = c.Quit()
	return nil
}

// message renders a as an RFC 5322 message with a quoted-printable UTF-8
// text body.
func (m *mailer) message(a Alert) []byte {
	var b bytes.Buffer
	header := func(k, v string) {
		b.WriteString(k + ": " + headerValue(v) + "\r\n")
	}
	subject := fmt.Sprintf("[dockward] %s %s: %s", a.Level, a.Service, a.Event)
	header("From", m.from)
	header("To", strings.Join(m.to, ", "))
	header("Subject", mime.QEncoding.Encode("utf-8", headerValue(subject)))
	header("Date", a.Time.Format(time.RFC1123Z))
	header("Message-ID", messageID(a.Time, m.helo))
	header("MIME-Version", "1.0")
	header("Content-Type", "text/plain; charset=utf-8")
	header("Content-Transfer-Encoding", "quoted-printable")
	header("Auto-Submitted", "auto-generated")
	b.WriteString("\r\n")

	qp := quotedprintable.NewWriter(&b)
	qp.Write([]byte(mailBody(a)))
	qp.Close()
	return b.Bytes()
}

// mailBody is the plain text of the mail, with \n line ends; the
// quoted-printable writer turns them into CRLF.
func mailBody(a Alert) string {
	var b strings.Builder
	if a.Message != "" {
		b.WriteString(a.Message + "\n\n")
	}
	for _, f := range [][2]string{
		{"Service", a.Service},
		{"Event", string(a.Event)},
		{"Level", a.Level.String()},
		{"Host", a.Host},
		{"Image", a.Image},
		{"Digest", a.Digest},
		{"Time", a.Time.Format(time.RFC3339)},
	} {
		if f[1] != "" {
			fmt.Fprintf(&b, "%-8s %s\n", f[0]+":", headerValue(f[1]))
		}
	}
	if a.Reason != "" {
		b.WriteString("\nReason:\n")
		b.WriteString(clean(a.Reason))
		b.WriteString("\n")
	}
	return strings.ToValidUTF8(b.String(), "\uFFFD")
}

// headerValue keeps a value on one line, so that nothing in an alert can
// add a header of its own.
func headerValue(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
}

func messageID(t time.Time, host string) string {
	var r [8]byte
	rand.Read(r[:])
	return fmt.Sprintf("<%d.%s@%s>", t.UnixNano(), hex.EncodeToString(r[:]), host)
}

// heloName is a name that is safe in EHLO and a Message-ID: the hostname
// if it is made of letters, digits, dots and hyphens, else "localhost".
func heloName(h string) string {
	if h == "" || len(h) > 253 {
		return "localhost"
	}
	for _, r := range h {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-') {
			return "localhost"
		}
	}
	return h
}

// isLocalhost matches the hosts to which net/smtp's PlainAuth sends a
// password without TLS.
func isLocalhost(host string) bool {
	return host == "localhost" || host == "127.0.0.1" || host == "::1"
}
