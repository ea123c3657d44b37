package rules

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"
)

// exprEnv is the typed environment expressions are compiled against. evalEnv must keep the
// same fields in the same order: programs address fields by index.
type exprEnv struct {
	Topic   string         `expr:"topic"`
	Levels  []string       `expr:"levels"`
	Payload any            `expr:"payload"`
	Subject string         `expr:"subject"`
	Tenant  string         `expr:"tenant"`
	Claims  map[string]any `expr:"claims"`
	Source  string         `expr:"source"`
	Meta    map[string]any `expr:"meta"` // strings; a missing key is nil, so `meta.x ?? "default"` works
	Now     time.Time      `expr:"now"`
}

// evalEnv is what programs run against: the same fields as exprEnv, each already boxed,
// so reading a field in the VM does not allocate. Only the fields a program reads are set.
type evalEnv struct {
	Topic   any
	Levels  any
	Payload any
	Subject any
	Tenant  any
	Claims  any
	Source  any
	Meta    any
	Now     any
}

// varMask says which environment variables an expression reads.
type varMask uint16

const (
	varTopic varMask = 1 << iota
	varLevels
	varPayload
	varSubject
	varTenant
	varClaims
	varSource
	varMeta
	varNow
)

var varByName = map[string]varMask{
	"topic": varTopic, "levels": varLevels, "payload": varPayload, "subject": varSubject,
	"tenant": varTenant, "claims": varClaims, "source": varSource, "meta": varMeta, "now": varNow,
}

// DisabledBuiltins are expr-lang builtins rules may not use: each can allocate without a
// bound set by the event (or duplicates a fleetgate variable). Documented in README.md.
var DisabledBuiltins = []string{"repeat", "reduce", "toJSON", "fromJSON", "string", "now"}

// MaxRangeLen bounds a constant integer range (a..b) in an expression.
const MaxRangeLen = 1000

// maxNodes bounds the AST of one expression.
const maxNodes = 1000

// vmMemoryBudget bounds what one evaluation may materialize (array elements in builtins).
const vmMemoryBudget = 1 << 20

// program is one compiled expression.
type program struct {
	src  string
	prog *vm.Program
	vars varMask
}

// exprCheck is an AST visitor that records the variables an expression reads and refuses
// constructs whose cost an event could make unbounded.
type exprCheck struct {
	vars     varMask
	problems []string
}

func (c *exprCheck) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	for _, p := range c.problems {
		if p == msg {
			return
		}
	}
	c.problems = append(c.problems, msg)
}

// Visit implements ast.Visitor.
func (c *exprCheck) Visit(n *ast.Node) {
	switch n := (*n).(type) {
	case *ast.IdentifierNode:
		c.vars |= varByName[n.Value]
	case *ast.BuiltinNode:
		// Predicate builtins (reduce, ...) cannot be switched off with expr.DisableBuiltin.
		for _, b := range DisabledBuiltins {
			if n.Name == b {
				c.fail("builtin %s is not available in rules (it can allocate without bound)", b)
			}
		}
	case *ast.BinaryNode:
		switch n.Operator {
		case "..":
			from, ok1 := intConst(n.Left)
			to, ok2 := intConst(n.Right)
			if !ok1 || !ok2 {
				c.fail("a range (a..b) needs integer constants on both sides")
			} else if to-from+1 > MaxRangeLen {
				c.fail("range %d..%d is too large: at most %d elements", from, to, MaxRangeLen)
			}
		case "matches":
			if _, ok := n.Right.(*ast.StringNode); !ok {
				c.fail("the pattern of matches must be a constant string, so it is compiled once")
			}
		}
	}
}

func intConst(n ast.Node) (int, bool) {
	switch n := n.(type) {
	case *ast.IntegerNode:
		return n.Value, true
	case *ast.UnaryNode:
		if v, ok := n.Node.(*ast.IntegerNode); ok && n.Operator == "-" {
			return -v.Value, true
		}
	}
	return 0, false
}

var baseOptions = func() []expr.Option {
	opts := []expr.Option{
		expr.Env(exprEnv{}),
		expr.MaxNodes(maxNodes),
		expr.Function("has", fnHas, new(func(any) bool)),
		expr.Function("isNumber", fnIsNumber, new(func(any) bool)),
		expr.Function("isString", fnIsString, new(func(any) bool)),
		expr.Function("isBool", fnIsBool, new(func(any) bool)),
		expr.Function("num", fnNum, new(func(any) float64)),
		expr.Function("str", fnStr, new(func(any) string)),
	}
	for _, b := range DisabledBuiltins {
		opts = append(opts, expr.DisableBuiltin(b))
	}
	return opts
}()

// compileExpr compiles src once; boolean requires a boolean result (a gate).
func compileExpr(src string, boolean bool) (p *program, err error) {
	defer func() {
		// expr panics on a few malformed inputs; a rule must never take the process down.
		if r := recover(); r != nil {
			p, err = nil, fmt.Errorf("expression cannot be compiled: %v", r)
		}
	}()
	check := &exprCheck{}
	opts := append(append([]expr.Option(nil), baseOptions...), expr.Patch(check))
	if boolean {
		opts = append(opts, expr.AsBool())
	}
	prog, err := expr.Compile(src, opts...)
	if err != nil {
		return nil, exprError(err)
	}
	if len(check.problems) > 0 {
		return nil, errors.New(strings.Join(check.problems, "; "))
	}
	return &program{src: src, prog: prog, vars: check.vars}, nil
}

// exprError turns an expr-lang error into one line: message and column.
func exprError(err error) error {
	var fe *file.Error
	if errors.As(err, &fe) {
		msg := fe.Message
		if strings.Contains(msg, "expected bool, but got") {
			msg = "must be a boolean condition: " + msg
		}
		return fmt.Errorf("%s (column %d)", msg, fe.Column+1)
	}
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	if strings.HasPrefix(msg, "expected bool, but got") {
		msg = "must be a boolean condition: " + msg
	}
	return errors.New(msg)
}

func fnHas(args ...any) (any, error) { return args[0] != nil, nil }

func fnIsNumber(args ...any) (any, error) {
	switch args[0].(type) {
	case float64, float32, int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return true, nil
	}
	return false, nil
}

func fnIsString(args ...any) (any, error) { _, ok := args[0].(string); return ok, nil }

func fnIsBool(args ...any) (any, error) { _, ok := args[0].(bool); return ok, nil }

// fnNum converts a number, a numeric string or a boolean to float64.
func fnNum(args ...any) (any, error) {
	switch v := args[0].(type) {
	case float64:
		return v, nil
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return nil, fmt.Errorf("num: %q is not a number", v)
		}
		return f, nil
	case bool:
		if v {
			return 1.0, nil
		}
		return 0.0, nil
	case nil:
		return nil, errors.New("num: value is missing")
	}
	rv := reflect.ValueOf(args[0])
	switch {
	case rv.CanInt():
		return float64(rv.Int()), nil
	case rv.CanUint():
		return float64(rv.Uint()), nil
	case rv.CanFloat():
		return rv.Float(), nil
	}
	return nil, fmt.Errorf("num: cannot convert %T to a number", args[0])
}

// fnStr converts a scalar to a string; arrays and objects are refused (their text is unbounded).
func fnStr(args ...any) (any, error) {
	switch v := args[0].(type) {
	case string:
		return v, nil
	case nil:
		return "", nil
	case bool:
		return strconv.FormatBool(v), nil
	case float64:
		if v == math.Trunc(v) && math.Abs(v) < 1e15 {
			return strconv.FormatInt(int64(v), 10), nil
		}
		return strconv.FormatFloat(v, 'g', -1, 64), nil
	case time.Time:
		return v.Format(time.RFC3339Nano), nil
	case time.Duration:
		return v.String(), nil
	}
	rv := reflect.ValueOf(args[0])
	switch {
	case rv.CanInt():
		return strconv.FormatInt(rv.Int(), 10), nil
	case rv.CanUint():
		return strconv.FormatUint(rv.Uint(), 10), nil
	case rv.CanFloat():
		return strconv.FormatFloat(rv.Float(), 'g', -1, 64), nil
	}
	return nil, fmt.Errorf("str: cannot convert %T to a string", args[0])
}
