// Package agent is the Go client of the nanoclaw agent socket.
//
// Every agent that nanoclaw supervises can talk to its supervisor over a Unix socket at
// /run/nanoclaw.sock inside its sandbox: heartbeats, its own identity and budgets, the
// device's store-and-forward outbox, messages to other agents along the channels the policy
// declares, and grant tokens that widen its capabilities for a while. The protocol is
// newline-delimited JSON (docs/AGENT_API.md), simple enough to speak by hand; this package
// exists so a Go agent does not have to: it numbers requests and matches answers by id, keeps
// message events that arrive between answers for Receive, turns refusals into typed errors,
// reconnects after the supervisor restarts and keeps heartbeats going in the background.
// It uses only the standard library, so agents build as small static binaries
// (CGO_ENABLED=0).
//
//	c, err := agent.Connect("")
//	if err != nil { ... }
//	defer c.Close()
//	hb := c.StartHeartbeat(0, "")
//	defer hb.Stop()
//	seq, err := c.OutboxPut("telemetry", map[string]float64{"celsius": 21.5})
//
// The SDKs for Python, JavaScript, Go and Rust share these names and semantics
// (sdk/CONFORMANCE.md).
package agent

import (
	"encoding/json"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultSocket is where the supervisor's socket is inside an agent's sandbox.
const DefaultSocket = "/run/nanoclaw.sock"

// Protocol is the protocol version this package speaks.
const Protocol = 1

// answerTimeout is how long a call waits for its answer.
var answerTimeout = 10 * time.Second

// dialTimeout bounds connecting to the socket.
const dialTimeout = 3 * time.Second

// Client is one connection to the supervisor, re-opened (with hello) by the first call after
// it drops. Its methods are safe to call from several goroutines at once.
type Client struct {
	path   string
	nextID int64 // atomic

	dialMu sync.Mutex // serialises reconnecting

	mu     sync.Mutex // guards cur, hello, closed
	cur    *conn
	hello  Hello
	closed bool

	qmu   sync.Mutex // guards queue, wake
	queue []*Message
	wake  chan struct{} // closed (and replaced) when a message is queued
}

// Connect opens the socket at path (empty: $NANOCLAW_SOCKET, else /run/nanoclaw.sock) and
// says hello. Errors are ErrDisconnected (no socket) or the supervisor's *Error.
func Connect(path string) (*Client, error) {
	if path == "" {
		path = os.Getenv("NANOCLAW_SOCKET")
	}
	if path == "" {
		path = DefaultSocket
	}
	c := &Client{path: path, wake: make(chan struct{})}
	if _, err := c.ensure(); err != nil {
		return nil, err
	}
	return c, nil
}

// Hello returns the supervisor's answer to the latest hello.
func (c *Client) Hello() Hello {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hello
}

// Heartbeat says the agent is alive, with an optional status text ("" for none). It
// returns the next heartbeat's deadline in milliseconds since the epoch, or 0 when the
// manifest promises no heartbeat.
func (c *Client) Heartbeat(status string) (int64, error) {
	var fields map[string]interface{}
	if status != "" {
		fields = map[string]interface{}{"status": status}
	}
	var r struct {
		DueByMs *int64 `json:"due_by_ms"`
	}
	if err := c.call("heartbeat", fields, &r); err != nil {
		return 0, err
	}
	if r.DueByMs == nil {
		return 0, nil
	}
	return *r.DueByMs, nil
}

// Whoami returns the agent's identity, state and trust score.
func (c *Client) Whoami() (*Whoami, error) {
	var r Whoami
	if err := c.call("whoami", nil, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Config returns the agent's effective grant and budgets.
func (c *Client) Config() (*Config, error) {
	var r Config
	if err := c.call("config", nil, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// OutboxPut appends data (any value encoding/json can marshal; a json.RawMessage is sent
// as is) under topic to the device's store-and-forward outbox. It returns the record's
// sequence number once the record is on disk.
func (c *Client) OutboxPut(topic string, data interface{}) (uint64, error) {
	var r struct {
		Seq uint64 `json:"seq"`
	}
	if err := c.call("outbox_put", map[string]interface{}{"topic": topic, "data": data}, &r); err != nil {
		return 0, err
	}
	return r.Seq, nil
}

// RequestCapability presents a grant token: a json.RawMessage, the token's JSON text as a
// string or []byte, or any value that marshals to the token object.
func (c *Client) RequestCapability(token interface{}) (*Grant, error) {
	switch t := token.(type) {
	case string:
		token = jsonText([]byte(t))
	case []byte:
		token = jsonText(t)
	}
	var r Grant
	if err := c.call("request_capability", map[string]interface{}{"token": token}, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// jsonText is text sent as the JSON it holds, or as a JSON string when it holds none (so
// the supervisor says what is wrong with it).
func jsonText(b []byte) interface{} {
	if json.Valid(b) {
		return json.RawMessage(b)
	}
	return string(b)
}

// Send sends data (as for OutboxPut) to the agent to under topic, along a channel the policy
// declares.
func (c *Client) Send(to, topic string, data interface{}) (*Sent, error) {
	var r Sent
	if err := c.call("send", map[string]interface{}{"to": to, "topic": topic, "data": data}, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Receive returns the next message from another agent, in arrival order, waiting at most
// timeout for one (timeout <= 0: no limit). It returns nil, nil when the timeout passes, and
// ErrDisconnected when the connection drops while it waits (the next call reconnects).
func (c *Client) Receive(timeout time.Duration) (*Message, error) {
	var deadline <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		deadline = t.C
	}
	for {
		m, wake := c.dequeue()
		if m != nil {
			return m, nil
		}
		cn, err := c.ensure()
		if err != nil {
			return nil, err
		}
		select {
		case <-wake:
		case <-cn.done:
			if m, _ := c.dequeue(); m != nil {
				return m, nil
			}
			return nil, cn.err
		case <-deadline:
			return nil, nil
		}
	}
}

// Close closes the connection; later calls fail with ErrDisconnected.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	cn := c.cur
	c.cur = nil
	c.mu.Unlock()
	if cn != nil {
		cn.close()
	}
	return nil
}

func (c *Client) dequeue() (*Message, <-chan struct{}) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if len(c.queue) == 0 {
		return nil, c.wake
	}
	m := c.queue[0]
	c.queue[0] = nil
	c.queue = c.queue[1:]
	return m, nil
}

func (c *Client) enqueue(m *Message) {
	c.qmu.Lock()
	c.queue = append(c.queue, m)
	close(c.wake)
	c.wake = make(chan struct{})
	c.qmu.Unlock()
}

// call sends one request on the current connection (reconnecting first if it dropped) and
// decodes a successful answer into out.
func (c *Client) call(op string, fields map[string]interface{}, out interface{}) error {
	cn, err := c.ensure()
	if err != nil {
		return err
	}
	return cn.call(op, fields, out)
}

// current is the live connection, nil when there is none.
func (c *Client) current() (*conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, &disconnected{errClosed}
	}
	if c.cur != nil && !c.cur.dead() {
		return c.cur, nil
	}
	return nil, nil
}

// ensure returns the live connection, opening one (and saying hello) if there is none.
func (c *Client) ensure() (*conn, error) {
	if cn, err := c.current(); cn != nil || err != nil {
		return cn, err
	}
	c.dialMu.Lock()
	defer c.dialMu.Unlock()
	if cn, err := c.current(); cn != nil || err != nil {
		return cn, err
	}
	cn, err := dial(c)
	if err != nil {
		return nil, err
	}
	var h Hello
	if err := cn.call("hello", map[string]interface{}{"protocol": Protocol}, &h); err != nil {
		cn.close()
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		cn.close()
		return nil, &disconnected{errClosed}
	}
	c.cur, c.hello = cn, h
	return cn, nil
}

func (c *Client) newID() int64 { return atomic.AddInt64(&c.nextID, 1) }
