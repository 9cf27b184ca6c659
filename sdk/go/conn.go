package agent

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"time"
)

// conn is one connection to the socket and the goroutine that reads it.
type conn struct {
	c    *Client
	nc   net.Conn
	wmu  sync.Mutex    // one request line at a time
	done chan struct{} // closed when the connection is gone; err is set then

	mu      sync.Mutex
	pending map[int64]chan []byte // id → where its answer goes (nil: disconnected)
	err     error
}

func dial(c *Client) (*conn, error) {
	nc, err := net.DialTimeout("unix", c.path, dialTimeout)
	if err != nil {
		return nil, &disconnected{err}
	}
	cn := &conn{c: c, nc: nc, done: make(chan struct{}), pending: map[int64]chan []byte{}}
	go cn.read()
	return cn, nil
}

func (cn *conn) dead() bool {
	select {
	case <-cn.done:
		return true
	default:
		return false
	}
}

// close closes the socket; the reader then fails what is in flight.
func (cn *conn) close() { cn.nc.Close() }

// line is what the reader needs of any line from the supervisor.
type line struct {
	Event string          `json:"event"`
	ID    json.RawMessage `json:"id"`
	OK    *bool           `json:"ok"`
	Error string          `json:"error"`
	Code  string          `json:"code"`
	From  string          `json:"from"`
	Topic string          `json:"topic"`
	Data  json.RawMessage `json:"data"`
}

func (cn *conn) read() {
	r := bufio.NewReaderSize(cn.nc, 64<<10)
	var cause error
	for {
		b, err := r.ReadBytes('\n')
		if len(b) > 0 {
			if e := cn.handle(b); e != nil {
				cause = e
			}
		}
		if err != nil {
			if cause == nil {
				cause = err
			}
			break
		}
	}
	cn.nc.Close()
	cn.mu.Lock()
	cn.err = &disconnected{cause}
	pending := cn.pending
	cn.pending = nil
	close(cn.done)
	cn.mu.Unlock()
	for _, ch := range pending {
		ch <- nil
	}
}

// handle routes one line: an event to the receive queue, an answer to its caller. It
// returns the error of an error line without an id (a limit crossed, before the close).
func (cn *conn) handle(b []byte) error {
	var l line
	if json.Unmarshal(b, &l) != nil {
		return nil
	}
	if l.Event != "" {
		if l.Event == "message" {
			cn.c.enqueue(&Message{From: l.From, Topic: l.Topic, Data: l.Data})
		}
		return nil
	}
	var id int64
	if len(l.ID) == 0 || string(l.ID) == "null" || json.Unmarshal(l.ID, &id) != nil {
		if l.OK != nil && !*l.OK {
			return &Error{Code: l.Code, Reason: l.Error}
		}
		return nil
	}
	cn.mu.Lock()
	ch := cn.pending[id]
	delete(cn.pending, id)
	cn.mu.Unlock()
	if ch != nil {
		ch <- b
	}
	return nil
}

// call sends one request and waits for its answer.
func (cn *conn) call(op string, fields map[string]interface{}, out interface{}) error {
	id := cn.c.newID()
	req := make(map[string]interface{}, len(fields)+2)
	for k, v := range fields {
		req[k] = v
	}
	req["op"], req["id"] = op, id
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("nanoclaw: %s: %w", op, err)
	}
	b = append(b, '\n')

	ch := make(chan []byte, 1)
	cn.mu.Lock()
	if cn.pending == nil {
		err := cn.err
		cn.mu.Unlock()
		return err
	}
	cn.pending[id] = ch
	cn.mu.Unlock()

	cn.wmu.Lock()
	cn.nc.SetWriteDeadline(time.Now().Add(answerTimeout))
	_, werr := cn.nc.Write(b)
	cn.wmu.Unlock()
	if werr != nil {
		cn.close() // the reader fails ch, with the close's cause
	}

	t := time.NewTimer(answerTimeout)
	defer t.Stop()
	select {
	case a := <-ch:
		if a == nil {
			cn.mu.Lock()
			defer cn.mu.Unlock()
			return cn.err
		}
		return decode(a, out)
	case <-t.C:
		cn.mu.Lock()
		delete(cn.pending, id)
		cn.mu.Unlock()
		return fmt.Errorf("nanoclaw: %s: %w", op, ErrTimeout)
	}
}

// decode turns an answer into out, or into an *Error.
func decode(a []byte, out interface{}) error {
	var head struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
		Code  string `json:"code"`
	}
	if err := json.Unmarshal(a, &head); err != nil {
		return fmt.Errorf("nanoclaw: unreadable answer: %w", err)
	}
	if !head.OK {
		return &Error{Code: head.Code, Reason: head.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(a, out); err != nil {
		return fmt.Errorf("nanoclaw: unreadable answer: %w", err)
	}
	return nil
}
