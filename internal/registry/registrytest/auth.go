package registrytest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// CA is a certificate authority made for one test.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// PEM is the CA certificate, PEM encoded.
	PEM []byte
}

// NewCA makes a CA with a fresh P-256 key, valid for a day.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("create CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{cert: cert, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Pool returns a pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// WriteFile writes the CA certificate to dir/name and returns the path.
func (ca *CA) WriteFile(t testing.TB, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Issue makes a certificate for 127.0.0.1 (an IP SAN) and writes it and its
// key as PEM files into dir, returning their paths.
func (ca *CA) Issue(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	key := newKey(t)
	der := ca.sign(t, &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, key)
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "registry.crt"), filepath.Join(dir, "registry.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func (ca *CA) sign(t testing.TB, tmpl *x509.Certificate, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatalf("sign certificate: %v", err)
	}
	return der
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Htpasswd writes an htpasswd file with one bcrypt entry, made by
// `htpasswd -B` (apache2-utils, installed by .ci/setup), and returns its path.
// The password goes through stdin, not the command line.
func Htpasswd(t testing.TB, dir, user, password string) string {
	t.Helper()
	bin, err := exec.LookPath("htpasswd")
	if err != nil {
		t.Fatalf("htpasswd not found (%v): install apache2-utils (.ci/setup does)", err)
	}
	path := filepath.Join(dir, "htpasswd")
	cmd := exec.Command(bin, "-B", "-i", "-c", path, user)
	cmd.Stdin = strings.NewReader(password + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("htpasswd -B: %v\n%s", err, out)
	}
	return path
}

// TokenServer is a Docker token server (the realm of a registry with
// auth.token): it checks Basic credentials and issues ES256 JWTs that carry
// the access claims the registry checks, signed by a key whose certificate
// (sent in the x5c header) chains to the registry's rootcertbundle.
type TokenServer struct {
	URL     string
	Service string
	Issuer  string

	t   testing.TB
	dir string

	mu        sync.Mutex
	users     map[string]string
	ca        *CA
	key       *ecdsa.PrivateKey
	leaf      []byte // DER of the signing key's certificate
	expiresIn int
	issued    map[string]int // by User-Agent's first word
}

// StartTokenServer starts a token server for users (name to password) whose
// tokens expire after expiresIn seconds. It is closed at test cleanup.
func StartTokenServer(t testing.TB, users map[string]string, expiresIn int) *TokenServer {
	t.Helper()
	s := &TokenServer{
		Service: "dockward-test-registry", Issuer: "dockward-test-issuer",
		t: t, dir: t.TempDir(), users: users, expiresIn: expiresIn, issued: map[string]int{},
	}
	s.Rotate()
	srv := httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(srv.Close)
	s.URL = srv.URL
	return s
}

// Rotate replaces the signing key and the root it chains to. A registry
// trusts the new root only once restarted (Registry.Restart), and then no
// token signed before.
func (s *TokenServer) Rotate() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ca = NewCA(s.t, "dockward test token CA")
	s.key = newKey(s.t)
	s.leaf = s.ca.sign(s.t, &x509.Certificate{
		SerialNumber: serial(s.t),
		Subject:      pkix.Name{CommonName: "dockward test token signer"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}, s.key)
}

// SetExpiresIn changes the lifetime of the tokens issued from now on.
func (s *TokenServer) SetExpiresIn(seconds int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expiresIn = seconds
}

// Issued returns how many tokens went to clients whose User-Agent starts
// with agent, such as "dockward".
func (s *TokenServer) Issued(agent string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issued[agent]
}

func (s *TokenServer) rootBundle(t testing.TB) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := filepath.Join(s.dir, fmt.Sprintf("root-%d.pem", time.Now().UnixNano()))
	if err := os.WriteFile(p, s.ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func (s *TokenServer) serve(w http.ResponseWriter, r *http.Request) {
	user, pass, ok := r.BasicAuth()
	s.mu.Lock()
	want, known := s.users[user]
	s.mu.Unlock()
	if !ok || !known || pass != want {
		w.Header().Set("WWW-Authenticate", `Basic realm="dockward test token server"`)
		http.Error(w, `{"details":"invalid credentials"}`, http.StatusUnauthorized)
		return
	}
	if r.URL.Query().Get("service") != s.Service {
		http.Error(w, "unknown service", http.StatusBadRequest)
		return
	}
	// Grant whatever is asked on repositories: the test users may do all.
	var access []map[string]any
	for _, scope := range r.URL.Query()["scope"] {
		parts := strings.Split(scope, ":")
		if len(parts) < 3 || parts[0] != "repository" {
			continue
		}
		name := strings.Join(parts[1:len(parts)-1], ":")
		access = append(access, map[string]any{"type": "repository", "name": name, "actions": strings.Split(parts[len(parts)-1], ",")})
	}
	s.mu.Lock()
	key, leaf, expiresIn := s.key, s.leaf, s.expiresIn
	agent, _, _ := strings.Cut(r.UserAgent(), "/")
	agent, _, _ = strings.Cut(agent, " ")
	s.issued[agent]++
	s.mu.Unlock()
	now := time.Now()
	token := s.sign(key, leaf, map[string]any{
		"iss": s.Issuer, "sub": user, "aud": s.Service,
		"exp": now.Add(time.Duration(expiresIn) * time.Second).Unix(), "nbf": now.Add(-time.Minute).Unix(), "iat": now.Unix(),
		"jti": fmt.Sprintf("%d", now.UnixNano()), "access": access,
	})
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"token": token, "access_token": token, "expires_in": expiresIn, "issued_at": now.UTC().Format(time.RFC3339)})
}

// sign makes an ES256 JWS with the signing certificate in x5c, as
// distribution's token verifier expects: the signature is r||s, 32 bytes
// each.
func (s *TokenServer) sign(key *ecdsa.PrivateKey, leaf []byte, claims map[string]any) string {
	enc := base64.RawURLEncoding
	header, _ := json.Marshal(map[string]any{"typ": "JWT", "alg": "ES256", "x5c": []string{base64.StdEncoding.EncodeToString(leaf)}})
	payload, _ := json.Marshal(claims)
	signing := enc.EncodeToString(header) + "." + enc.EncodeToString(payload)
	sum := sha256.Sum256([]byte(signing))
	r, sig, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		s.t.Errorf("sign token: %v", err)
		return ""
	}
	var raw bytes.Buffer
	raw.Write(r.FillBytes(make([]byte, 32)))
	raw.Write(sig.FillBytes(make([]byte, 32)))
	return signing + "." + enc.EncodeToString(raw.Bytes())
}
