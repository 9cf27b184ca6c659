package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fake is an in-process supervisor on a temporary Unix socket. Each connection is served by
// serve, in its own goroutine.
type fake struct {
	t     *testing.T
	path  string
	ln    net.Listener
	serve func(s *session)
	conns int32 // atomic: connections accepted
}

type session struct {
	t   *testing.T
	nc  net.Conn
	r   *bufio.Reader
	wmu sync.Mutex
}

type request map[string]interface{}

func (q request) op() string { return q["op"].(string) }
func (q request) id() int64  { return int64(q["id"].(float64)) }

func newFake(t *testing.T, serve func(s *session)) *fake {
	t.Helper()
	dir, err := os.MkdirTemp("", "nanoclaw-sdk-go")
	if err != nil {
		t.Fatal(err)
	}
	f := &fake{t: t, path: filepath.Join(dir, "nanoclaw.sock"), serve: serve}
	f.ln, err = net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.ln.Close()
		os.RemoveAll(dir)
	})
	go func() {
		for {
			nc, err := f.ln.Accept()
			if err != nil {
				return
			}
			atomic.AddInt32(&f.conns, 1)
			s := &session{t: t, nc: nc, r: bufio.NewReader(nc)}
			go func() {
				defer nc.Close()
				f.serve(s)
			}()
		}
	}()
	return f
}

// next reads one request; nil when the client is gone.
func (s *session) next() request {
	b, err := s.r.ReadBytes('\n')
	if err != nil {
		return nil
	}
	var q request
	if err := json.Unmarshal(b, &q); err != nil {
		s.t.Errorf("request is not JSON: %q", b)
		return nil
	}
	return q
}

func (s *session) send(v interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.nc.Write(append(b, '\n'))
}

func (s *session) ok(q request, fields map[string]interface{}) {
	a := map[string]interface{}{"ok": true, "id": q["id"]}
	for k, v := range fields {
		a[k] = v
	}
	s.send(a)
}

// hello expects and answers the hello that opens every connection.
func (s *session) hello() bool {
	q := s.next()
	if q == nil {
		return false
	}
	if q.op() != "hello" || q["protocol"] != float64(1) {
		s.t.Errorf("first request is %v, not hello with protocol 1", q)
		return false
	}
	s.ok(q, map[string]interface{}{"agent": "sensor", "version": "1.0.0", "device_id": "dev",
		"protocol": 1, "heartbeat_s": 30})
	return true
}

// answering serves hello, then answers every request with answer's fields.
func answering(answer func(s *session, q request)) func(s *session) {
	return func(s *session) {
		if !s.hello() {
			return
		}
		for q := s.next(); q != nil; q = s.next() {
			answer(s, q)
		}
	}
}

func connect(t *testing.T, f *fake) *Client {
	t.Helper()
	c, err := Connect(f.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestHelloAndDefaultPath(t *testing.T) {
	f := newFake(t, answering(func(s *session, q request) { s.ok(q, nil) }))
	t.Setenv("NANOCLAW_SOCKET", f.path)
	c, err := Connect("")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if h := c.Hello(); h.Agent != "sensor" || h.HeartbeatS != 30 || h.Protocol != 1 {
		t.Fatalf("hello: %+v", h)
	}
	_, err = Connect(filepath.Join(t.TempDir(), "absent.sock"))
	if !errors.Is(err, ErrDisconnected) {
		t.Fatalf("no socket: %v, want ErrDisconnected", err)
	}
}

func TestIDMatchingWithEventInterleaved(t *testing.T) {
	f := newFake(t, answering(func(s *session, q request) {
		switch q.op() {
		case "whoami":
			s.send(map[string]interface{}{"ok": true, "id": q.id() + 1000, "agent": "stray"})
			s.send(map[string]interface{}{"event": "message", "from": "hub", "topic": "readings",
				"data": map[string]interface{}{"celsius": 21.5}})
			s.ok(q, map[string]interface{}{"agent": "sensor", "uid": 61000, "state": "running",
				"trust": 100, "policy_version": 3})
		case "config":
			s.ok(q, map[string]interface{}{"memory_bytes": 16777216, "cpus": 0.5,
				"channels": map[string]interface{}{
					"send":    []interface{}{map[string]string{"to": "display", "topic": "readings"}},
					"receive": []interface{}{map[string]string{"from": "hub", "topic": "*"}}},
				"grants":  []interface{}{map[string]interface{}{"capability": "net:x:1", "not_after": 5}},
				"energy":  map[string]interface{}{"budget_mwh": 500, "window_s": 3600, "used_mwh": 1.25},
				"runtime": nil, "heartbeat_s": 30})
		}
	}))
	c := connect(t, f)
	w, err := c.Whoami()
	if err != nil {
		t.Fatal(err)
	}
	if w.Agent != "sensor" || w.UID != 61000 || w.State != "running" || w.Trust != 100 || w.PolicyVersion != 3 {
		t.Fatalf("whoami: %+v", w)
	}
	m, err := c.Receive(time.Second)
	if err != nil || m == nil {
		t.Fatalf("receive: %v %v", m, err)
	}
	if m.From != "hub" || m.Topic != "readings" || string(m.Data) != `{"celsius":21.5}` {
		t.Fatalf("message: %+v (%s)", m, m.Data)
	}
	cfg, err := c.Config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MemoryBytes != 16777216 || cfg.Channels.Send[0].To != "display" ||
		cfg.Channels.Receive[0].From != "hub" || cfg.Grants[0].NotAfter != 5 ||
		cfg.Energy == nil || cfg.Energy.BudgetMwh != 500 || cfg.Energy.UsedMwh != 1.25 || cfg.Runtime != nil {
		t.Fatalf("config: %+v", cfg)
	}
}

func TestErrorCodes(t *testing.T) {
	reason := "no channel from sensor to \"display\"\nfor topic secrets: ünïcode"
	f := newFake(t, answering(func(s *session, q request) {
		a := map[string]interface{}{"ok": false, "id": q["id"], "error": reason}
		if code := q["topic"].(string); code != "none" {
			a["code"] = code
		}
		s.send(a)
	}))
	c := connect(t, f)
	sentinels := map[string]error{CodeBadRequest: ErrBadRequest, CodeDenied: ErrDenied,
		CodeUnavailable: ErrUnavailable, CodeLimit: ErrLimit, "none": nil, "novel": nil}
	for code, want := range sentinels {
		_, err := c.Send("display", code, "x")
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("%s: %v is not an *Error", code, err)
		}
		if e.Reason != reason {
			t.Errorf("%s: reason %q, want %q", code, e.Reason, reason)
		}
		wantCode := code
		if code == "none" {
			wantCode = ""
		}
		if e.Code != wantCode {
			t.Errorf("%s: code %q, want %q", code, e.Code, wantCode)
		}
		for _, s := range []error{ErrBadRequest, ErrDenied, ErrUnavailable, ErrLimit, ErrDisconnected, ErrTimeout} {
			if got := errors.Is(err, s); got != (s == want) {
				t.Errorf("%s: errors.Is(err, %v) = %v", code, s, got)
			}
		}
	}
}

func TestErrorLineWithoutIDThenClose(t *testing.T) {
	f := newFake(t, func(s *session) {
		if !s.hello() || s.next() == nil {
			return
		}
		s.send(map[string]interface{}{"ok": false, "error": "more than 50 messages a second", "code": "limit"})
	})
	c := connect(t, f)
	_, err := c.Heartbeat("")
	if !errors.Is(err, ErrDisconnected) {
		t.Fatalf("got %v, want ErrDisconnected", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Reason != "more than 50 messages a second" || !errors.Is(err, ErrLimit) {
		t.Fatalf("the cause is lost: %v", err)
	}
}

func TestReconnectAfterClose(t *testing.T) {
	var n int32
	f := newFake(t, func(s *session) {
		if !s.hello() {
			return
		}
		q := s.next()
		if q == nil {
			return
		}
		if atomic.AddInt32(&n, 1) == 1 {
			return // the supervisor goes away with the first call in flight
		}
		s.ok(q, map[string]interface{}{"due_by_ms": 42})
		for q := s.next(); q != nil; q = s.next() {
			s.ok(q, map[string]interface{}{"due_by_ms": 43})
		}
	})
	c := connect(t, f)
	if _, err := c.Heartbeat(""); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("in flight: %v, want ErrDisconnected", err)
	}
	due, err := c.Heartbeat("")
	if err != nil || due != 42 {
		t.Fatalf("after reconnecting: %d %v", due, err)
	}
	if due, err := c.Heartbeat(""); err != nil || due != 43 {
		t.Fatalf("same connection: %d %v", due, err)
	}
	if got := atomic.LoadInt32(&f.conns); got != 2 {
		t.Fatalf("%d connections, want 2", got)
	}
	c.Close()
	if _, err := c.Heartbeat(""); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("after Close: %v", err)
	}
}

func TestReceive(t *testing.T) {
	release := make(chan struct{})
	f := newFake(t, func(s *session) {
		if !s.hello() {
			return
		}
		// Messages that waited for the agent follow the hello answer.
		s.send(map[string]interface{}{"event": "message", "from": "a", "topic": "t", "data": 1})
		s.send(map[string]interface{}{"event": "message", "from": "b", "topic": "t", "data": 2})
		<-release
		s.send(map[string]interface{}{"event": "message", "from": "c", "topic": "t", "data": 3})
		s.next()
	})
	c := connect(t, f)
	for _, want := range []string{"a", "b"} {
		m, err := c.Receive(time.Second)
		if err != nil || m == nil || m.From != want {
			t.Fatalf("receive: %+v %v, want from %s", m, err, want)
		}
	}
	start := time.Now()
	m, err := c.Receive(50 * time.Millisecond)
	if m != nil || err != nil {
		t.Fatalf("timeout: %+v %v", m, err)
	}
	if d := time.Since(start); d < 50*time.Millisecond || d > time.Second {
		t.Fatalf("timed out after %v", d)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		close(release)
	}()
	if m, err := c.Receive(0); err != nil || m == nil || string(m.Data) != "3" {
		t.Fatalf("waiting without limit: %+v %v", m, err)
	}
}

func TestConcurrentCalls(t *testing.T) {
	f := newFake(t, answering(func(s *session, q request) {
		// Answer out of order: each after a delay that shrinks with the id.
		go func() {
			time.Sleep(time.Duration(50-q.id()%50) * 100 * time.Microsecond)
			var n uint64
			fmt.Sscanf(q["topic"].(string), "t%d", &n)
			s.ok(q, map[string]interface{}{"seq": n})
		}()
	}))
	c := connect(t, f)
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for g := 0; g < 20; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				want := uint64(g*100 + i)
				seq, err := c.OutboxPut(fmt.Sprintf("t%d", want), map[string]int{"g": g})
				if err != nil || seq != want {
					errs <- fmt.Errorf("goroutine %d call %d: seq %d, err %v", g, i, seq, err)
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestAnswerTimeout(t *testing.T) {
	f := newFake(t, func(s *session) {
		if s.hello() {
			for s.next() != nil {
			}
		}
	})
	c := connect(t, f)
	old := answerTimeout
	answerTimeout = 50 * time.Millisecond
	defer func() { answerTimeout = old }()
	if _, err := c.Whoami(); !errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v, want ErrTimeout", err)
	}
}

func TestRequestCapabilityForms(t *testing.T) {
	tokens := make(chan string, 4)
	f := newFake(t, answering(func(s *session, q request) {
		b, _ := json.Marshal(q["token"])
		tokens <- string(b)
		s.ok(q, map[string]interface{}{"capability": "net:127.0.0.1:80", "not_after": 1700000000})
	}))
	c := connect(t, f)
	want := `{"payload":{"agent":"sensor"},"signature":{"sig":"x"}}`
	forms := []interface{}{
		json.RawMessage(want),
		"{\n \"payload\": {\"agent\": \"sensor\"},\n \"signature\": {\"sig\": \"x\"}\n}",
		[]byte(want),
		map[string]interface{}{"payload": map[string]string{"agent": "sensor"}, "signature": map[string]string{"sig": "x"}},
	}
	for i, tok := range forms {
		g, err := c.RequestCapability(tok)
		if err != nil || g.Capability != "net:127.0.0.1:80" || g.NotAfter != 1700000000 {
			t.Fatalf("form %d: %+v %v", i, g, err)
		}
		if got := <-tokens; got != want {
			t.Errorf("form %d sent %s", i, got)
		}
	}
}

func TestHeartbeatHelper(t *testing.T) {
	var beats int32
	f := newFake(t, answering(func(s *session, q request) {
		if q.op() == "heartbeat" && q["status"] == "fine" {
			atomic.AddInt32(&beats, 1)
		}
		s.ok(q, map[string]interface{}{"due_by_ms": 1})
	}))
	c := connect(t, f)
	hb := c.StartHeartbeat(10*time.Millisecond, "fine")
	deadline := time.Now().Add(2 * time.Second)
	for atomic.LoadInt32(&beats) < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d heartbeats in 2 s", atomic.LoadInt32(&beats))
		}
		time.Sleep(5 * time.Millisecond)
	}
	hb.Stop()
	hb.Stop() // twice is fine
	n := atomic.LoadInt32(&beats)
	time.Sleep(50 * time.Millisecond)
	if got := atomic.LoadInt32(&beats); got != n {
		t.Fatalf("%d heartbeats after Stop", got-n)
	}
}
