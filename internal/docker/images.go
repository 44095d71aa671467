package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// pullTimeout bounds a pull, which streams for as long as layers download.
const pullTimeout = 15 * time.Minute

// Image is what Dockward reads from an image inspection.
type Image struct {
	ID          string `json:"Id"` // sha256:...
	RepoTags    []string
	RepoDigests []string // repo@sha256:... manifest digests, one per registry it came from
}

// InspectImage inspects an image by reference (name:tag, name@sha256:...)
// or ID. A missing image is an error matching ErrNotFound.
func (c *Client) InspectImage(ctx context.Context, ref string) (Image, error) {
	if err := checkPathRef(ref); err != nil {
		return Image{}, fmt.Errorf("inspect image: %w", err)
	}
	req := request{
		op:     "inspect image " + ref,
		method: http.MethodGet,
		path:   "/images/" + ref + "/json",
	}
	var img Image
	if err := c.call(ctx, req, 0, &img); err != nil {
		return Image{}, err
	}
	return img, nil
}

// TagImage tags the image source (a reference or ID) as repo:tag.
func (c *Client) TagImage(ctx context.Context, source, repo, tag string) error {
	if err := checkPathRef(source); err != nil {
		return fmt.Errorf("tag image: %w", err)
	}
	req := request{
		op:     fmt.Sprintf("tag image %s as %s:%s", source, repo, tag),
		method: http.MethodPost,
		path:   "/images/" + source + "/tag",
		query:  url.Values{"repo": {repo}, "tag": {tag}},
	}
	return c.call(ctx, req, 0, nil)
}

// RemoveImage removes an image reference, and the image once no reference
// is left, without force: an image used by a container is an error (409).
func (c *Client) RemoveImage(ctx context.Context, ref string) error {
	if err := checkPathRef(ref); err != nil {
		return fmt.Errorf("remove image: %w", err)
	}
	req := request{
		op:     "remove image " + ref,
		method: http.MethodDelete,
		path:   "/images/" + ref,
		query:  url.Values{"force": {"false"}, "noprune": {"false"}},
	}
	return c.call(ctx, req, 0, nil)
}

// PullImage pulls ref (name:tag or name@sha256:..., "latest" when it has
// neither) and waits for the pull to finish. The engine reports a failure
// either as an error status (an unreachable registry, a missing tag: 404)
// or, once the pull is under way, as an error line in a 200 progress
// stream; both are errors.
func (c *Client) PullImage(ctx context.Context, ref string) error {
	repo, tag := splitRef(ref)
	op := "pull image " + ref
	ctx, cancel := context.WithTimeout(ctx, pullTimeout)
	defer cancel()
	resp, err := c.send(ctx, request{
		op:     op,
		method: http.MethodPost,
		path:   "/images/create",
		query:  url.Values{"fromImage": {repo}, "tag": {tag}},
	})
	if err != nil {
		return err
	}
	defer closeBody(resp)
	if err := readPullProgress(resp.Body, c.logger.With("image", ref)); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// pullMessage is one line of the engine's JSON progress stream.
type pullMessage struct {
	Status      string `json:"status"`
	ID          string `json:"id"`
	Progress    string `json:"progress"` // a progress bar, on the many "Downloading" lines
	Error       string `json:"error"`
	ErrorDetail *struct {
		Message string `json:"message"`
	} `json:"errorDetail"`
}

// readPullProgress reads a pull's progress stream to its end and returns
// the first error it reports.
func readPullProgress(r io.Reader, logger *slog.Logger) error {
	dec := json.NewDecoder(r)
	for {
		var m pullMessage
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read progress: %w", err)
		}
		if m.ErrorDetail != nil && m.ErrorDetail.Message != "" {
			return errors.New(m.ErrorDetail.Message)
		}
		if m.Error != "" {
			return errors.New(m.Error)
		}
		if m.Status != "" && m.Progress == "" {
			logger.Debug("pull progress", "status", m.Status, "layer", m.ID)
		}
	}
}

// splitRef splits an image reference into the fromImage and tag parameters
// of a pull: the digest after '@' if there is one, else the tag after the
// last ':' that follows the last '/' (a registry's port is not a tag), else
// "latest" - an empty tag would pull every tag of the repository.
func splitRef(ref string) (repo, tag string) {
	if name, digest, ok := strings.Cut(ref, "@"); ok {
		repo, _ = splitTag(name)
		return repo, digest
	}
	repo, tag = splitTag(ref)
	if tag == "" {
		tag = "latest"
	}
	return repo, tag
}

func splitTag(name string) (repo, tag string) {
	colon := strings.LastIndexByte(name, ':')
	if colon > strings.LastIndexByte(name, '/') {
		return name[:colon], name[colon+1:]
	}
	return name, ""
}
