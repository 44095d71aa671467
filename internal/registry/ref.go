package registry

import (
	"errors"
	"fmt"
	"strings"
)

// maxNameLength is the distribution limit on a name, host included.
const maxNameLength = 255

// Ref is a tagged image in the watched registry.
type Ref struct {
	Host       string // registry host[:port], as in Client.Host
	Repository string // such as "team/app"
	Tag        string // such as "latest"
}

// ParseRef parses the image of a watched service, relative to the registry
// at registryHost (host[:port], as returned by Client.Host):
//
//	myapp:latest                 repository "myapp", tag "latest"
//	team/app                     repository "team/app", tag "latest"
//	localhost:5000/myapp:v2      accepted when registryHost is "localhost:5000"
//
// A reference naming another registry host is an error, and so is one with a
// digest: a watched image is a tag. The first path component names a host
// when it contains '.' or ':' or is "localhost". Repository and tag follow
// the distribution grammar.
func ParseRef(s, registryHost string) (Ref, error) {
	if registryHost == "" || strings.ContainsAny(registryHost, "/@ ") {
		return Ref{}, fmt.Errorf("image reference %q: invalid registry host %q", s, registryHost)
	}
	if !looksLikeHost(registryHost) {
		return Ref{}, fmt.Errorf("image reference %q: registry host %q has no '.' or port and is not localhost, so docker would read %q as an image on Docker Hub", s, registryHost, registryHost+"/"+s)
	}
	if s == "" {
		return Ref{}, fmt.Errorf("image reference is empty")
	}
	if strings.Contains(s, "@") {
		return Ref{}, fmt.Errorf("image reference %q: digests are not supported, a watched image must be a tag", s)
	}
	rest := s
	if i := strings.IndexByte(s, '/'); i >= 0 {
		first := s[:i]
		if looksLikeHost(first) {
			if !strings.EqualFold(first, registryHost) {
				return Ref{}, fmt.Errorf("image reference %q: names registry host %q, but the watched registry is %q", s, first, registryHost)
			}
			rest = s[i+1:]
		}
	}
	repo, tag := rest, "latest"
	if i := strings.LastIndexByte(rest, ':'); i > strings.LastIndexByte(rest, '/') {
		repo, tag = rest[:i], rest[i+1:]
	}
	if err := validateRepository(repo); err != nil {
		return Ref{}, fmt.Errorf("image reference %q: %w", s, err)
	}
	if err := validateTag(tag); err != nil {
		return Ref{}, fmt.Errorf("image reference %q: %w", s, err)
	}
	if n := len(registryHost) + 1 + len(repo); n > maxNameLength {
		return Ref{}, fmt.Errorf("image reference %q: name is %d characters long, the limit is %d", s, n, maxNameLength)
	}
	return Ref{Host: registryHost, Repository: repo, Tag: tag}, nil
}

// looksLikeHost reports whether the first component of a reference names a
// registry host rather than a path on Docker Hub, as docker decides it.
func looksLikeHost(s string) bool {
	return strings.ContainsAny(s, ".:") || s == "localhost"
}

// Local returns the reference the Docker engine knows the image by: host/repo:tag.
func (r Ref) Local() string { return r.LocalRepo() + ":" + r.Tag }

// LocalRepo returns host/repo.
func (r Ref) LocalRepo() string { return r.Host + "/" + r.Repository }

// WithTag returns host/repo:tag for another tag of the same repository.
func (r Ref) WithTag(tag string) string { return r.LocalRepo() + ":" + tag }

// String returns r.Local().
func (r Ref) String() string { return r.Local() }

// validateRepository checks a repository name against the distribution
// grammar: path components of lowercase letters and digits, separated within
// a component by '.', '_', '__' or runs of '-'.
func validateRepository(repo string) error {
	if repo == "" {
		return errors.New("repository is empty")
	}
	if len(repo) > maxNameLength {
		return fmt.Errorf("repository is %d characters long, the limit is %d", len(repo), maxNameLength)
	}
	for _, c := range strings.Split(repo, "/") {
		if !validComponent(c) {
			return fmt.Errorf("repository %q: component %q must be lowercase letters and digits, separated by '.', '_', '__' or '-'", repo, c)
		}
	}
	return nil
}

func validComponent(c string) bool {
	if c == "" || !isLowerAlnum(c[0]) || !isLowerAlnum(c[len(c)-1]) {
		return false
	}
	for i := 0; i < len(c); {
		if isLowerAlnum(c[i]) {
			i++
			continue
		}
		j := i
		for j < len(c) && !isLowerAlnum(c[j]) {
			j++
		}
		if sep := c[i:j]; sep != "." && sep != "_" && sep != "__" && strings.Trim(sep, "-") != "" {
			return false
		}
		i = j
	}
	return true
}

func isLowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

// validateTag checks a tag against [\w][\w.-]{0,127}.
func validateTag(tag string) error {
	if tag == "" {
		return errors.New("tag is empty")
	}
	if len(tag) > 128 {
		return fmt.Errorf("tag is %d characters long, the limit is 128", len(tag))
	}
	for i := 0; i < len(tag); i++ {
		c := tag[i]
		word := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_'
		if !word && (i == 0 || c != '.' && c != '-') {
			return fmt.Errorf("tag %q: must be letters, digits, '_', '.' or '-', not starting with '.' or '-'", tag)
		}
	}
	return nil
}
