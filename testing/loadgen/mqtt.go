package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// A device speaks the few MQTT 3.1.1 packets a telemetry device needs:
// CONNECT, PUBLISH at QoS 1, PINGREQ. It is written for the load tool, so
// that thousands of devices cost the load tool little next to the broker.
type device struct {
	conn net.Conn
	r    *bufio.Reader
	buf  []byte
	pid  uint16
}

// MQTT 3.1.1 packet types (high nibble of the first byte).
const (
	pktConnect  = 1
	pktConnack  = 2
	pktPublish  = 3
	pktPuback   = 4
	pktPingresp = 13
)

// dial opens a connection and logs the device in; the CONNACK must accept it.
func dial(addr, clientID, password string, keepalive time.Duration, timeout time.Duration) (*device, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	d := &device{conn: conn, r: bufio.NewReaderSize(conn, 512)}
	var body []byte
	body = appendString(body, "MQTT")
	body = append(body, 4)              // protocol level 3.1.1
	body = append(body, 0x80|0x40|0x02) // username, password, clean session
	body = binary.BigEndian.AppendUint16(body, uint16(keepalive/time.Second))
	body = appendString(body, clientID)
	body = appendString(body, "unused") // IoT Core ignores the user name
	body = appendString(body, password)
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write(appendPacket(nil, pktConnect<<4, body)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("CONNECT: %w", err)
	}
	typ, payload, err := d.read()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("CONNACK: %w", err)
	}
	if typ != pktConnack || len(payload) != 2 || payload[1] != 0 {
		conn.Close()
		return nil, fmt.Errorf("refused: packet type %d, CONNACK %x", typ, payload)
	}
	conn.SetDeadline(time.Time{})
	return d, nil
}

// publish sends one QoS 1 message and waits for its PUBACK.
func (d *device) publish(topic string, payload []byte, timeout time.Duration) error {
	d.pid++
	if d.pid == 0 {
		d.pid = 1
	}
	body := appendString(d.buf[:0], topic)
	body = binary.BigEndian.AppendUint16(body, d.pid)
	body = append(body, payload...)
	d.buf = body
	d.conn.SetDeadline(time.Now().Add(timeout))
	if _, err := d.conn.Write(appendPacket(nil, pktPublish<<4|0x02, body)); err != nil {
		return fmt.Errorf("PUBLISH: %w", err)
	}
	for {
		typ, p, err := d.read()
		if err != nil {
			return fmt.Errorf("waiting for PUBACK %d: %w", d.pid, err)
		}
		if typ == pktPuback && len(p) >= 2 && binary.BigEndian.Uint16(p) == d.pid {
			return nil
		}
		if typ != pktPingresp {
			return fmt.Errorf("waiting for PUBACK %d: got packet type %d", d.pid, typ)
		}
	}
}

// ping sends a PINGREQ and waits for the PINGRESP.
func (d *device) ping(timeout time.Duration) error {
	d.conn.SetDeadline(time.Now().Add(timeout))
	if _, err := d.conn.Write([]byte{0xC0, 0}); err != nil {
		return err
	}
	typ, _, err := d.read()
	if err == nil && typ != pktPingresp {
		err = fmt.Errorf("got packet type %d, want PINGRESP", typ)
	}
	return err
}

func (d *device) close() { d.conn.Close() }

// read reads one packet: its type and the bytes after the fixed header.
func (d *device) read() (byte, []byte, error) {
	h, err := d.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		b, err := d.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&0x7f) * mult
		if b&0x80 == 0 {
			break
		}
		if i == 3 {
			return 0, nil, errors.New("malformed remaining length")
		}
		mult *= 128
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(d.r, p); err != nil {
		return 0, nil, err
	}
	return h >> 4, p, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func appendPacket(b []byte, header byte, body []byte) []byte {
	b = append(b, header)
	n := len(body)
	for {
		c := byte(n % 128)
		n /= 128
		if n > 0 {
			c |= 0x80
		}
		b = append(b, c)
		if n == 0 {
			break
		}
	}
	return append(b, body...)
}
