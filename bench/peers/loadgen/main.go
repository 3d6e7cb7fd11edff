// loadgen: a closed-loop or open-loop HTTP load generator for the peer benchmark.
//
// Not Python on purpose: the servers under test are Python, and a Python client on a
// 2-core box would measure itself. Standard library only (nothing to download). It records
// the latency of accepted (2xx) requests separately, so an overload's p99 is not flattered
// by fast rejections, and classifies failures for the drain test.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type result struct {
	Mode          string         `json:"mode"`
	Concurrency   int            `json:"concurrency"`
	Rate          float64        `json:"rate"`
	DurationS     float64        `json:"duration_s"`
	Sent          int64          `json:"sent"`
	OK            int64          `json:"ok"`
	Status        map[string]int `json:"status"`
	Rejected      int64          `json:"rejected"`       // 429/503 or refused connection: never accepted
	Failed        int64          `json:"failed"`         // accepted, then errored (reset, EOF, 5xx, timeout)
	ClientDropped int64          `json:"client_dropped"` // open loop: arrival while max-inflight was busy
	Errors        map[string]int `json:"errors"`
	RPS           float64        `json:"rps"` // 2xx per second
	P50Ms         float64        `json:"p50_ms"`
	P90Ms         float64        `json:"p90_ms"`
	P99Ms         float64        `json:"p99_ms"`
	MaxMs         float64        `json:"max_ms"`
	BadBodies     int64          `json:"bad_bodies"` // 2xx whose body lacks -expect
	Completed     int64          `json:"completed"`  // every answered or failed request, warm-up and tail included
}

type recorder struct {
	mu      sync.Mutex
	lat     []time.Duration
	status  map[string]int
	errs    map[string]int
	sent    atomic.Int64
	ok      atomic.Int64
	rej     atomic.Int64
	failed  atomic.Int64
	dropped atomic.Int64
	bad     atomic.Int64
	all     atomic.Int64
}

func classify(err error) (string, bool) {
	// returns (label, accepted): accepted=false means the server never took the request.
	s := err.Error()
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused", false
	case strings.Contains(s, "server closed idle connection"):
		return "closed_idle", false
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(s, "Timeout"):
		return "timeout", true
	case errors.Is(err, syscall.ECONNRESET):
		return "reset", true
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "eof", true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return "net", true
	}
	return "other", true
}

// headerList collects repeated -H flags.
type headerList []string

func (h *headerList) String() string     { return strings.Join(*h, ", ") }
func (h *headerList) Set(v string) error { *h = append(*h, v); return nil }

func main() {
	url := flag.String("url", "", "target URL")
	bodyFile := flag.String("body", "", "request body file (POST); empty = GET")
	ctype := flag.String("content-type", "application/json", "Content-Type")
	conc := flag.Int("c", 1, "closed loop: connections; open loop: max in flight")
	rate := flag.Float64("rate", 0, "open loop arrivals per second (0 = closed loop)")
	dur := flag.Duration("d", 5*time.Second, "measured duration")
	warm := flag.Duration("warmup", time.Second, "unmeasured warm-up before -d")
	maxReq := flag.Int64("n", 1<<40, "stop after this many measured requests")
	timeout := flag.Duration("timeout", 10*time.Second, "per-request timeout")
	expect := flag.String("expect", "", "substring a 2xx body must contain")
	out := flag.String("o", "", "write JSON result here (default stdout)")
	var headers headerList
	flag.Var(&headers, "H", "extra request header 'Name: value' (repeatable), e.g. "+
		"Inference-Header-Content-Length for binary tensor bodies")
	flag.Parse()

	var body []byte
	if *bodyFile != "" {
		b, err := os.ReadFile(*bodyFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		body = b
	}
	maxConns := *conc
	tr := &http.Transport{
		MaxIdleConns: maxConns, MaxIdleConnsPerHost: maxConns, MaxConnsPerHost: maxConns,
		DisableCompression: true, IdleConnTimeout: 90 * time.Second,
		DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
	}
	client := &http.Client{Transport: tr, Timeout: *timeout}
	rec := &recorder{status: map[string]int{}, errs: map[string]int{}}
	var measuring atomic.Bool
	stop := make(chan struct{})

	one := func() {
		var req *http.Request
		if body != nil {
			req, _ = http.NewRequest("POST", *url, bytes.NewReader(body))
			req.Header.Set("Content-Type", *ctype)
		} else {
			req, _ = http.NewRequest("GET", *url, nil)
		}
		for _, h := range headers {
			name, value, _ := strings.Cut(h, ":")
			req.Header.Set(strings.TrimSpace(name), strings.TrimSpace(value))
		}
		t0 := time.Now()
		resp, err := client.Do(req)
		defer rec.all.Add(1)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				// Nothing listens (e.g. after a drain): back off instead of spinning core 1.
				time.Sleep(5 * time.Millisecond)
			}
			// Counted by completion time: only what finished inside the window is measured.
			if !measuring.Load() {
				return
			}
			rec.sent.Add(1)
			label, accepted := classify(err)
			if accepted {
				rec.failed.Add(1)
			} else {
				rec.rej.Add(1)
			}
			rec.mu.Lock()
			rec.errs[label]++
			rec.mu.Unlock()
			return
		}
		data, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		el := time.Since(t0)
		if !measuring.Load() {
			return
		}
		rec.sent.Add(1)
		code := resp.StatusCode
		rec.mu.Lock()
		rec.status[fmt.Sprint(code)]++
		if rerr != nil {
			rec.errs["body_read"]++
		}
		if code/100 == 2 && rerr == nil {
			rec.lat = append(rec.lat, el)
		}
		rec.mu.Unlock()
		switch {
		case code/100 == 2 && rerr == nil:
			rec.ok.Add(1)
			if *expect != "" && !bytes.Contains(data, []byte(*expect)) {
				rec.bad.Add(1)
			}
		case code == 429 || code == 503:
			rec.rej.Add(1)
		default:
			rec.failed.Add(1)
		}
	}

	var wg sync.WaitGroup
	var begin time.Time
	if *rate <= 0 {
		for i := 0; i < *conc; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					one()
				}
			}()
		}
	} else {
		sem := make(chan struct{}, *conc)
		wg.Add(1)
		go func() {
			defer wg.Done()
			interval := time.Duration(float64(time.Second) / *rate)
			next := time.Now()
			for {
				select {
				case <-stop:
					return
				default:
				}
				next = next.Add(interval)
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
				select {
				case sem <- struct{}{}:
					wg.Add(1)
					go func() { defer wg.Done(); one(); <-sem }()
				default:
					if measuring.Load() {
						rec.dropped.Add(1)
					}
				}
			}
		}()
	}
	time.Sleep(*warm)
	measuring.Store(true)
	begin = time.Now()
	deadline := begin.Add(*dur)
	for time.Now().Before(deadline) && rec.sent.Load() < *maxReq {
		time.Sleep(10 * time.Millisecond)
	}
	measuring.Store(false)
	elapsed := time.Since(begin).Seconds()
	close(stop)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select { // in-flight requests get at most the request timeout to finish
	case <-done:
	case <-time.After(*timeout + time.Second):
	}

	r := result{Concurrency: *conc, Rate: *rate, DurationS: elapsed, Sent: rec.sent.Load(), OK: rec.ok.Load(),
		Status: rec.status, Rejected: rec.rej.Load(), Failed: rec.failed.Load(), ClientDropped: rec.dropped.Load(),
		Errors: rec.errs, BadBodies: rec.bad.Load(), Mode: "closed"}
	r.Completed = rec.all.Load()
	if *rate > 0 {
		r.Mode = "open"
	}
	r.RPS = float64(r.OK) / elapsed
	rec.mu.Lock()
	lat := rec.lat
	rec.mu.Unlock()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		i := int(p * float64(len(lat)-1))
		return float64(lat[i].Microseconds()) / 1000
	}
	r.P50Ms, r.P90Ms, r.P99Ms, r.MaxMs = pct(0.50), pct(0.90), pct(0.99), pct(1.0)
	enc, _ := json.MarshalIndent(r, "", "  ")
	if *out != "" {
		_ = os.WriteFile(*out, enc, 0o644)
	} else {
		fmt.Println(string(enc))
	}
}
