package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
)

// Promote points repository:tag at the manifest repository@digest, by
// copying the manifest's exact bytes and media type: GET it by digest, PUT
// it under the tag, then HEAD the tag, which must answer exactly digest.
// The token it asks for has the scope pull,push. Only sha256 digests are
// supported, the algorithm registries use.
func (c *Client) Promote(ctx context.Context, repository, digest, tag string) error {
	if err := c.promote(ctx, repository, digest, tag); err != nil {
		return fmt.Errorf("promote %s/%s@%s to :%s: %w", c.base.Host, repository, digest, tag, err)
	}
	return nil
}

func (c *Client) promote(ctx context.Context, repository, digest, tag string) error {
	if err := validateRepository(repository); err != nil {
		return err
	}
	if err := validateTag(tag); err != nil {
		return err
	}
	if !validDigest(digest) || !strings.HasPrefix(digest, "sha256:") {
		return fmt.Errorf("invalid digest %q: want sha256:<64 hex digits>", truncate(digest, 80))
	}
	scope := withScope("repository:" + repository + ":pull,push")
	body, mediaType, err := c.manifest(ctx, repository, digest, scope)
	if err != nil {
		return err
	}
	if err := c.putManifest(ctx, repository, tag, mediaType, body, digest, scope); err != nil {
		return err
	}
	got, err := c.digest(ctx, repository, tag)
	if err != nil {
		return fmt.Errorf("check the tag after PUT: %w", err)
	}
	if got != digest {
		return badResponse("after PUT, :%s points to %s, not %s (another push moved it?)", tag, got, digest)
	}
	return nil
}

// manifest GETs repository@digest and checks that its bytes hash to digest.
func (c *Client) manifest(ctx context.Context, repository, digest string, opts ...requestOption) ([]byte, string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	path := "/v2/" + repository + "/manifests/" + digest
	resp, at, err := c.do(ctx, http.MethodGet, path, opts...)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "", statusErrorAfter(resp, at)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	if err != nil {
		return nil, "", fmt.Errorf("GET %s: read manifest: %w", path, classifyTransport(ctx, err))
	}
	if len(body) > maxManifestSize {
		return nil, "", badResponse("GET %s: manifest larger than %d bytes", path, maxManifestSize)
	}
	sum := sha256.Sum256(body)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != digest {
		return nil, "", badResponse("GET %s: the manifest's bytes hash to %s", path, got)
	}
	mediaType, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || !knownManifestType(mediaType) {
		return nil, "", badResponse("GET %s: Content-Type %q is not a manifest type Dockward knows", path, truncate(resp.Header.Get("Content-Type"), 100))
	}
	return body, mediaType, nil
}

// putManifest PUTs body under repository:tag with its media type; the
// registry must answer 201 with the digest of the bytes.
func (c *Client) putManifest(ctx context.Context, repository, tag, mediaType string, body []byte, digest string, opts ...requestOption) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	path := "/v2/" + repository + "/manifests/" + tag
	resp, at, err := c.do(ctx, http.MethodPut, path, append(opts, withBody(mediaType, body))...)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return statusErrorAfter(resp, at)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != digest {
		return badResponse("PUT %s: the registry stored digest %s, not %s", path, truncate(got, 100), digest)
	}
	return nil
}

// knownManifestType reports whether t is one of the manifest media types
// Dockward asks for (acceptManifests).
func knownManifestType(t string) bool {
	for _, known := range strings.Split(acceptManifests, ", ") {
		if t == known {
			return true
		}
	}
	return false
}
