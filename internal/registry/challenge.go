package registry

import (
	"strconv"
	"strings"
)

// Challenge is one authentication challenge from a WWW-Authenticate header,
// such as Bearer realm="https://auth.example.com/token",scope="repository:app:pull".
type Challenge struct {
	// Scheme as sent, such as "Bearer" or "Basic"; compare it case-insensitively.
	Scheme string
	// Params maps lowercased parameter names to their unquoted values.
	Params map[string]string
}

// ParseChallenges parses the value of a WWW-Authenticate header (RFC 7235:
// challenges separated by commas, each a scheme followed by a token68 or by
// name=value parameters, values being tokens or quoted strings). It never
// fails: input it cannot make sense of is skipped. A token68 is skipped too,
// registries do not send one. When a parameter repeats, the first one counts.
func ParseChallenges(header string) []Challenge {
	p := challengeParser{s: header}
	var out []Challenge
	for {
		p.skipSpaceAndCommas()
		if p.eof() {
			return out
		}
		scheme := p.token()
		if scheme == "" {
			p.i++ // not a token character: skip it and resynchronise
			continue
		}
		c := Challenge{Scheme: scheme, Params: map[string]string{}}
		p.params(&c)
		out = append(out, c)
	}
}

type challengeParser struct {
	s string
	i int
}

// params reads the parameters (or token68) of one challenge, stopping before
// the scheme of the next challenge.
func (p *challengeParser) params(c *Challenge) {
	first := true
	for {
		sawComma := p.skipSpaceAndCommas()
		if p.eof() {
			return
		}
		start := p.i
		name := p.token()
		if name == "" {
			p.i++ // junk, such as a stray quote or slash
			first = false
			continue
		}
		p.skipSpace()
		if p.peek() != '=' {
			if first && !sawComma {
				first = false // a token68 such as "Basic dXNlcg"
				continue
			}
			p.i = start // the next challenge's scheme
			return
		}
		p.i++ // '='
		p.skipSpace()
		if p.eof() || p.peek() == '=' || p.peek() == ',' {
			for p.peek() == '=' { // token68 padding: "Basic dXNlcg=="
				p.i++
			}
			first = false
			continue
		}
		first = false
		var value string
		if p.peek() == '"' {
			value = p.quoted()
		} else {
			value = p.token()
		}
		key := strings.ToLower(name)
		if _, dup := c.Params[key]; !dup {
			c.Params[key] = value
		}
	}
}

func (p *challengeParser) eof() bool { return p.i >= len(p.s) }

func (p *challengeParser) peek() byte {
	if p.eof() {
		return 0
	}
	return p.s[p.i]
}

func (p *challengeParser) skipSpace() {
	for !p.eof() && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

// skipSpaceAndCommas skips white space and commas, reporting whether it
// skipped a comma.
func (p *challengeParser) skipSpaceAndCommas() bool {
	comma := false
	for !p.eof() {
		switch p.s[p.i] {
		case ' ', '\t':
		case ',':
			comma = true
		default:
			return comma
		}
		p.i++
	}
	return comma
}

func (p *challengeParser) token() string {
	start := p.i
	for !p.eof() && isTokenChar(p.s[p.i]) {
		p.i++
	}
	return p.s[start:p.i]
}

// quoted reads a quoted string starting at the opening quote; an
// unterminated one runs to the end of the input.
func (p *challengeParser) quoted() string {
	p.i++ // opening quote
	var b strings.Builder
	for !p.eof() {
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			return b.String()
		case c == '\\' && p.i+1 < len(p.s):
			b.WriteByte(p.s[p.i+1])
			p.i += 2
		default:
			b.WriteByte(c)
			p.i++
		}
	}
	return b.String()
}

// isTokenChar reports whether c is a tchar of RFC 7230.
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// summary renders the parameters that help a person fix access to the
// registry, with long values cut, for an error message.
func (c Challenge) summary() string {
	var b strings.Builder
	b.WriteString(c.Scheme)
	for _, k := range []string{"realm", "service", "scope", "error"} {
		v, ok := c.Params[k]
		if !ok {
			continue
		}
		if len(v) > 200 {
			v = v[:200] + "..."
		}
		b.WriteString(" " + k + "=" + strconv.Quote(v))
	}
	return b.String()
}
