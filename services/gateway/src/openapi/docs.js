// Renders the gateway's OpenAPI document (/openapi.json) as a page: each operation grouped by
// tag, with its parameters, request body and answers. Every piece of text from the document is
// set with textContent (or as a text node), never as HTML, so nothing in it can inject markup;
// the page runs under `script-src 'self'` and needs no other origin.
'use strict';

(function () {
  const METHODS = ['get', 'put', 'post', 'patch', 'delete', 'head', 'options', 'trace'];
  const MAX_DEPTH = 8;

  /** An element with attributes and children; strings become text nodes. */
  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === false || value === null || value === undefined) continue;
      node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === 'string' ? document.createTextNode(child) : child);
    }
    return node;
  }

  /** Text with `code` spans, as the document's descriptions write them. */
  function inline(text) {
    const parts = String(text).split(/`([^`]*)`/);
    return parts.map((part, i) => (i % 2 === 1 ? el('code', null, part) : part));
  }

  /** A description: paragraphs separated by blank lines. */
  function prose(text, className) {
    if (!text) return null;
    const block = el('div', { class: className || 'prose' });
    for (const paragraph of String(text).split(/\n\s*\n/)) {
      const trimmed = paragraph.trim();
      if (trimmed) block.append(el('p', null, inline(trimmed.replace(/\s*\n\s*/g, ' '))));
    }
    return block;
  }

  /** A stable, safe fragment id. */
  function slug(text) {
    return String(text).toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '') || 'x';
  }

  function refName(ref) {
    return decodeURIComponent(String(ref).split('/').pop());
  }

  function resolve(doc, ref, kind) {
    const prefix = '#/components/' + kind + '/';
    if (typeof ref !== 'string' || !ref.startsWith(prefix)) return null;
    const table = (doc.components || {})[kind] || {};
    const name = refName(ref);
    return Object.prototype.hasOwnProperty.call(table, name) ? table[name] : null;
  }

  /** A one-line description of a schema's type: `string (date-time)`, `array of Key`, … */
  function typeLabel(doc, schema) {
    if (!schema || typeof schema !== 'object') return 'any';
    if (schema.$ref) return refName(schema.$ref);
    if (schema.allOf) return schema.allOf.map((s) => typeLabel(doc, s)).join(' and ');
    if (schema.oneOf) return 'one of ' + schema.oneOf.map((s) => typeLabel(doc, s)).join(', ');
    if (schema.anyOf) return 'any of ' + schema.anyOf.map((s) => typeLabel(doc, s)).join(', ');
    const types = Array.isArray(schema.type) ? schema.type : schema.type ? [schema.type] : [];
    const names = types.map((type) => {
      if (type === 'array') return 'array of ' + typeLabel(doc, schema.items);
      if (type === 'object' && schema.additionalProperties && typeof schema.additionalProperties === 'object'
          && !schema.properties) {
        return 'map of string to ' + typeLabel(doc, schema.additionalProperties);
      }
      return schema.format && type !== 'null' ? type + ' (' + schema.format + ')' : type;
    });
    if (names.length === 0) return schema.properties ? 'object' : 'any';
    return names.join(' or ');
  }

  /** The rules a schema sets on its value, in words. */
  function constraints(schema) {
    const rules = [];
    if (!schema || typeof schema !== 'object') return rules;
    if (Array.isArray(schema.enum)) rules.push('one of ' + schema.enum.map((v) => JSON.stringify(v)).join(', '));
    if (schema.minimum !== undefined) rules.push('at least ' + schema.minimum);
    if (schema.maximum !== undefined) rules.push('at most ' + schema.maximum);
    if (schema.minLength !== undefined) rules.push('at least ' + schema.minLength + ' characters');
    if (schema.maxLength !== undefined) rules.push('at most ' + schema.maxLength + ' characters');
    if (schema.pattern !== undefined) rules.push('matches ' + schema.pattern);
    if (schema.additionalProperties === false) rules.push('no other fields');
    return rules;
  }

  /** The properties of an object schema, following `$ref` and `allOf`. */
  function collectProperties(doc, schema, seen, out) {
    if (!schema || typeof schema !== 'object') return out;
    if (schema.$ref) {
      if (seen.has(schema.$ref)) return out;
      const target = resolve(doc, schema.$ref, 'schemas');
      return collectProperties(doc, target, new Set([...seen, schema.$ref]), out);
    }
    for (const part of schema.allOf || []) collectProperties(doc, part, seen, out);
    const required = new Set(schema.required || []);
    for (const [name, property] of Object.entries(schema.properties || {})) {
      out.push({ name, property, required: required.has(name) });
    }
    if (schema.additionalProperties === false) out.closed = true;
    return out;
  }

  /** The schema under a `$ref`, or the schema itself. */
  function target(doc, schema, seen) {
    if (schema && schema.$ref && !seen.has(schema.$ref)) {
      return { schema: resolve(doc, schema.$ref, 'schemas'), seen: new Set([...seen, schema.$ref]) };
    }
    return { schema, seen };
  }

  /** What fields an object has, as a nested list; arrays show their items' fields. */
  function schemaView(doc, schema, seen, depth) {
    if (!schema || depth > MAX_DEPTH) return null;
    const { schema: resolved, seen: inner } = target(doc, schema, seen);
    if (!resolved) return null;
    if (resolved.type === 'array' || (Array.isArray(resolved.type) && resolved.type.includes('array'))) {
      return schemaView(doc, resolved.items, inner, depth + 1);
    }
    if (resolved.additionalProperties && typeof resolved.additionalProperties === 'object' && !resolved.properties) {
      return schemaView(doc, resolved.additionalProperties, inner, depth + 1);
    }
    for (const variants of [resolved.oneOf, resolved.anyOf]) {
      if (Array.isArray(variants)) {
        const list = el('ul', { class: 'variants' });
        for (const variant of variants) {
          list.append(el('li', null, el('span', { class: 'type' }, typeLabel(doc, variant)),
            schemaView(doc, variant, inner, depth + 1)));
        }
        return list;
      }
    }
    const properties = collectProperties(doc, resolved, new Set(), []);
    if (properties.length === 0) return null;
    const list = el('ul', { class: 'fields' });
    for (const { name, property, required } of properties) {
      const { schema: shown } = target(doc, property, inner);
      const description = (property && property.description) || (shown && shown.description);
      const rules = constraints(property).concat(property && property.$ref ? constraints(shown) : []);
      list.append(el('li', null,
        el('code', { class: 'field' }, name), ' ',
        el('span', { class: 'type' }, typeLabel(doc, property)),
        required ? el('span', { class: 'required' }, 'required') : null,
        description ? el('span', { class: 'field-description' }, inline(description)) : null,
        rules.length ? el('span', { class: 'rules' }, rules.join('; ')) : null,
        schemaView(doc, property, inner, depth + 1)));
    }
    return list;
  }

  /** Content types with their schemas: `application/json`: Key, and its fields. */
  function contentView(doc, content) {
    const entries = Object.entries(content || {});
    if (entries.length === 0) return null;
    const list = el('ul', { class: 'content' });
    for (const [type, media] of entries) {
      const schema = media && media.schema;
      list.append(el('li', null,
        el('code', { class: 'media-type' }, type),
        schema ? [' ', el('span', { class: 'type' }, typeLabel(doc, schema))] : null,
        schema && schema.description ? el('span', { class: 'field-description' }, inline(schema.description)) : null,
        schemaView(doc, schema, new Set(), 0)));
    }
    return list;
  }

  function securityView(doc, operation) {
    const requirements = operation.security || doc.security || [];
    const schemes = (doc.components && doc.components.securitySchemes) || {};
    if (requirements.length === 0) return el('p', null, 'No key needed.');
    const alternatives = requirements.map((requirement) => Object.keys(requirement).map((name) => {
      const scheme = schemes[name] || {};
      if (scheme.type === 'apiKey') return 'an API key in the ' + scheme.name + ' ' + (scheme.in || 'header');
      if (scheme.type === 'http') return 'Authorization: ' + (scheme.scheme === 'bearer' ? 'Bearer' : scheme.scheme);
      return name;
    }).join(' and ') || 'nothing');
    return el('p', null, 'Needs ' + alternatives.join(', or ') + '.');
  }

  function parametersView(doc, parameters) {
    if (!parameters || parameters.length === 0) return null;
    const rows = parameters.map((p) => {
      const parameter = p.$ref ? resolve(doc, p.$ref, 'parameters') || {} : p;
      const rules = constraints(parameter.schema);
      return el('tr', null,
        el('th', { scope: 'row' }, el('code', null, parameter.name || '')),
        el('td', null, parameter.in || ''),
        el('td', null, typeLabel(doc, parameter.schema)),
        el('td', null, parameter.required ? 'yes' : 'no'),
        el('td', null, parameter.description ? inline(parameter.description) : '',
          rules.length ? el('span', { class: 'rules' }, rules.join('; ')) : null));
    });
    return el('table', { class: 'parameters' },
      el('thead', null, el('tr', null,
        el('th', { scope: 'col' }, 'Name'), el('th', { scope: 'col' }, 'In'),
        el('th', { scope: 'col' }, 'Type'), el('th', { scope: 'col' }, 'Required'),
        el('th', { scope: 'col' }, 'Description'))),
      el('tbody', null, rows));
  }

  function headersView(doc, headers) {
    const entries = Object.entries(headers || {});
    if (entries.length === 0) return null;
    return el('ul', { class: 'headers' }, entries.map(([name, header]) =>
      el('li', null, 'Header ', el('code', null, name), ' ',
        el('span', { class: 'type' }, typeLabel(doc, header.schema)),
        header.description ? el('span', { class: 'field-description' }, inline(header.description)) : null)));
  }

  /** An operation's answers; a shared one links to its full description under "Common answers". */
  function responsesView(doc, responses) {
    const list = el('ul', { class: 'responses' });
    const statuses = Object.keys(responses || {}).sort();
    for (const status of statuses) {
      const response = responses[status] || {};
      const item = el('li', { class: 'response status-' + status.charAt(0) + 'xx' },
        el('strong', { class: 'status' }, status), ' ');
      if (response.$ref) {
        const name = refName(response.$ref);
        const shared = resolve(doc, response.$ref, 'responses') || {};
        item.append(...inline(shared.description || name), ' ',
          el('a', { class: 'shared', href: '#response-' + slug(name) }, name));
      } else {
        item.append(...inline(response.description || ''),
          headersView(doc, response.headers) || '', contentView(doc, response.content) || '');
      }
      list.append(item);
    }
    return list;
  }

  /** The answers many operations share, each described once. */
  function commonAnswersView(doc) {
    const responses = Object.entries((doc.components && doc.components.responses) || {});
    if (responses.length === 0) return null;
    const list = el('ul', { class: 'responses' });
    for (const [name, response] of responses) {
      list.append(el('li', { id: 'response-' + slug(name), tabindex: '-1' },
        el('strong', null, name), ' ',
        response.description ? inline(response.description) : '',
        headersView(doc, response.headers),
        contentView(doc, response.content)));
    }
    return el('section', { id: 'common-answers', 'aria-labelledby': 'common-answers-heading', class: 'common' },
      el('h2', { id: 'common-answers-heading' }, 'Common answers'),
      el('p', null, 'Answers many operations share. Every ', el('code', null, '/v1'),
        ' operation can also answer 401, 429 and 503 as described here.'),
      list);
  }

  function operationView(doc, path, method, operation) {
    const id = 'op-' + slug(operation.operationId || method + '-' + path);
    const body = operation.requestBody;
    const details = el('details', { id, class: 'operation' },
      el('summary', null,
        el('span', { class: 'method method-' + method }, method.toUpperCase()), ' ',
        el('code', { class: 'path' }, path), ' ',
        el('span', { class: 'summary' }, operation.summary || '')),
      el('div', { class: 'operation-body' },
        prose(operation.description),
        el('h3', null, 'Authentication'),
        securityView(doc, operation),
        operation.parameters && operation.parameters.length ? [el('h3', null, 'Parameters'),
          parametersView(doc, operation.parameters)] : null,
        body ? [el('h3', null, 'Request body'),
          el('p', null, body.required ? 'Required. ' : 'Optional: it may be left out. ',
            body.description ? inline(body.description) : ''),
          contentView(doc, body.content)] : null,
        el('h3', null, 'Responses'),
        responsesView(doc, operation.responses)));
    details.addEventListener('toggle', () => {
      if (details.open && location.hash !== '#' + id) history.replaceState(null, '', '#' + id);
    });
    return details;
  }

  /** Every operation, by tag, in the order the document lists its tags. */
  function groups(doc) {
    const order = (doc.tags || []).map((t) => t.name);
    const byTag = new Map(order.map((name) => [name, []]));
    for (const [path, item] of Object.entries(doc.paths || {})) {
      for (const method of METHODS) {
        const operation = item && item[method];
        if (!operation) continue;
        const tag = (operation.tags && operation.tags[0]) || 'other';
        if (!byTag.has(tag)) byTag.set(tag, []);
        byTag.get(tag).push({ path, method, operation });
      }
    }
    return byTag;
  }

  function openTarget() {
    const id = decodeURIComponent(location.hash.slice(1));
    if (!id) return;
    const found = document.getElementById(id);
    if (found && found.tagName === 'DETAILS') {
      found.open = true;
      found.querySelector('summary').focus();
    } else if (found && found.hasAttribute('tabindex')) {
      found.focus();
    }
  }

  function render(doc) {
    const info = doc.info || {};
    document.title = (info.title || 'API') + ' API';
    document.getElementById('title').textContent = (info.title || 'API') + ' API';
    document.getElementById('version').textContent =
      'Version ' + (info.version || '?') + ' · OpenAPI ' + (doc.openapi || '?');
    const description = prose(info.description);
    if (description) document.getElementById('description').replaceWith(description);

    const main = document.getElementById('operations');
    const contents = document.getElementById('contents');
    const tagInfo = new Map((doc.tags || []).map((t) => [t.name, t]));
    let count = 0;
    for (const [tag, operations] of groups(doc)) {
      if (operations.length === 0) continue;
      const sectionId = 'tag-' + slug(tag);
      const headingId = sectionId + '-heading';
      const list = el('ul', { class: 'operations' });
      const entries = el('ul', null);
      for (const { path, method, operation } of operations) {
        const view = operationView(doc, path, method, operation);
        list.append(el('li', null, view));
        entries.append(el('li', null, el('a', { href: '#' + view.id },
          method.toUpperCase() + ' ' + path)));
        count += 1;
      }
      const about = tagInfo.get(tag);
      main.append(el('section', { id: sectionId, 'aria-labelledby': headingId, class: 'tag' },
        el('h2', { id: headingId }, tag),
        about && about.description ? prose(about.description) : null,
        list));
      contents.append(el('li', null, el('a', { href: '#' + sectionId }, tag), entries));
    }
    const common = commonAnswersView(doc);
    if (common) {
      main.append(common);
      contents.append(el('li', null, el('a', { href: '#common-answers' }, 'Common answers')));
    }
    document.getElementById('status').textContent = count + ' operations.';
    setUpTools(main);
    window.addEventListener('hashchange', openTarget);
    openTarget();
  }

  function setUpTools(main) {
    const tools = document.getElementById('tools');
    tools.hidden = false;
    const all = () => Array.from(main.querySelectorAll('details.operation'));
    document.getElementById('expand').addEventListener('click', () => all().forEach((d) => { d.open = true; }));
    document.getElementById('collapse').addEventListener('click', () => all().forEach((d) => { d.open = false; }));
    const filter = document.getElementById('filter');
    filter.addEventListener('input', () => {
      const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
      let shown = 0;
      for (const details of all()) {
        const text = details.querySelector('summary').textContent.toLowerCase();
        const match = words.every((w) => text.includes(w));
        details.parentElement.hidden = !match;
        if (match) shown += 1;
      }
      for (const section of main.querySelectorAll('section.tag')) {
        section.hidden = !section.querySelector('li:not([hidden]) > details');
      }
      document.getElementById('status').textContent =
        words.length ? shown + ' operations match.' : shown + ' operations.';
    });
  }

  function fail(error) {
    const status = document.getElementById('status');
    status.textContent = 'The document could not be loaded: ' + (error && error.message ? error.message : error);
    status.className = 'error';
  }

  function start() {
    fetch('/openapi.json', { headers: { accept: 'application/json' }, credentials: 'same-origin' })
      .then((response) => {
        if (!response.ok) throw new Error('GET /openapi.json answered ' + response.status);
        return response.json();
      })
      .then(render)
      .catch(fail);
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();
