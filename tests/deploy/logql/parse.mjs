// Parses LogQL with @grafana/lezer-logql, the grammar Grafana's Loki query editor uses, and says what
// each query reads. Input on stdin: a JSON list of queries. Output on stdout: a JSON list, one object
// per query: the tree, its error nodes, and the labels the query uses (stream selector matchers,
// label filters, unwrap, grouping) and its line filters. Run by tests/support/logql.py.
import { readFileSync } from "node:fs";
import { parser } from "@grafana/lezer-logql";

function unquote(text) {
  if (text.startsWith("`")) return text.slice(1, -1);
  try {
    return JSON.parse(text.startsWith("'") ? `"${text.slice(1, -1).replace(/"/g, '\\"')}"` : text);
  } catch {
    return text;
  }
}

function within(node, name) {
  for (let up = node.parent; up; up = up.parent) if (up.name === name) return true;
  return false;
}

function describe(query) {
  const tree = parser.parse(query);
  const text = (node) => query.slice(node.from, node.to);
  const out = {
    tree: tree.toString(),
    top: tree.topNode.name,
    errors: [],
    selectors: [],
    filters: [],
    unwraps: [],
    groupings: [],
    lineFilters: [],
  };
  const matcher = (node) => {
    const [name, op, value] = [node.firstChild, node.firstChild?.nextSibling, node.lastChild];
    return { name: name ? text(name) : "", op: op ? text(op) : "", value: value ? text(value) : "" };
  };
  tree.iterate({
    enter(ref) {
      const node = ref.node;
      if (node.type.isError) {
        out.errors.push({ from: node.from, to: node.to, near: query.slice(Math.max(0, node.from - 20), node.to + 20) });
        return;
      }
      switch (node.name) {
        case "Matcher": {
          const { name, op, value } = matcher(node);
          const entry = { name, op, value: unquote(value), numeric: false };
          if (within(node, "Selector")) out.selectors.push(entry);
          else out.filters.push(entry);
          break;
        }
        case "NumberFilter":
        case "DurationFilter":
        case "BytesFilter": {
          const { name, op, value } = matcher(node);
          out.filters.push({ name, op, value, numeric: true });
          break;
        }
        case "UnwrapExpr":
          for (let child = node.firstChild; child; child = child.nextSibling) {
            if (child.name === "Identifier") out.unwraps.push(text(child));
          }
          break;
        case "Grouping":
        case "GroupingLabels": {
          const names = [];
          node.toTree().iterate({
            enter(inner) {
              if (inner.name === "Identifier" || inner.name === "LabelName") {
                names.push(query.slice(node.from + inner.from, node.from + inner.to));
              }
            },
          });
          out.groupings.push(...names);
          break;
        }
        case "LineFilter": {
          const op = node.firstChild;
          const value = node.lastChild;
          if (op && value && value.name === "String") {
            out.lineFilters.push({ op: text(op), value: unquote(text(value)) });
          }
          break;
        }
        default:
          break;
      }
    },
  });
  return out;
}

const queries = JSON.parse(readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(queries.map(describe)));
