package notify

import (
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

const (
	// userAgent identifies Dockward to Discord and webhook receivers.
	userAgent = "dockward"
	// maxResponseBody is how much of an answer is read.
	maxResponseBody = 64 << 10
	// maxErrorText is how much of an error answer goes into the log.
	maxErrorText = 300
)

// do sends req and turns anything but a 2xx answer into a *statusError.
// Transport errors are returned without the URL: Discord webhook URLs (and
// many webhook URLs) carry a secret token that must not reach the log.
func do(client *http.Client, req *http.Request) error {
	req.Header.Set("User-Agent", userAgent)
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			return ue.Err
		}
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	e := &statusError{
		code:   resp.StatusCode,
		status: resp.Status,
		body:   oneLine(string(body), maxErrorText),
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		e.retryAfter = retryAfter(resp.Header.Get("Retry-After"), body)
	}
	return e
}

// retryAfter reads how long a 429 asks us to wait: Discord's JSON body
// field retry_after (seconds, a float), else the Retry-After header
// (seconds, possibly fractional, or an HTTP date). 0 means not said.
func retryAfter(header string, body []byte) time.Duration {
	var rl struct {
		RetryAfter float64 `json:"retry_after"`
	}
	if json.Unmarshal(body, &rl) == nil && rl.RetryAfter > 0 {
		return seconds(rl.RetryAfter)
	}
	header = strings.TrimSpace(header)
	if header == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(header, 64); err == nil {
		return seconds(s)
	}
	if t, err := http.ParseTime(header); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

func seconds(s float64) time.Duration {
	if !(s > 0) {
		return 0
	}
	// Anything beyond a day is nonsense; the caller caps it far lower.
	return time.Duration(math.Min(s, 86400) * float64(time.Second))
}

// oneLine squeezes s onto one line of at most n runes, for a log field.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(strings.ToValidUTF8(s, "\uFFFD")), " ")
	return truncate(s, n)
}
