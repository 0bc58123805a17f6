// The event catalog: every type this API sends, with its description, schema and example.

import { h } from './dom.js';

const pretty = (value) => JSON.stringify(value, null, 2);

function details(summary, value) {
  return h('details', {}, h('summary', {}, summary), h('pre', { tabindex: '0' }, h('code', {}, pretty(value))));
}

export async function catalogScreen(app) {
  const catalog = await app.catalog();
  const items = catalog.data.map((type) =>
    h('li', { class: 'card', 'data-type': type.type },
      h('h2', {}, h('code', {}, type.type)),
      h('p', {}, type.description || 'No description.'),
      type.path ? h('p', { class: 'hint' }, `Sent after ${type.methods.join(', ')} ${type.path}`) : null,
      type.include_object ? null : h('p', { class: 'hint' }, 'Its events carry no object (data.object is null).'),
      'schema' in type ? details('Schema of data.object', type.schema) : null,
      'example' in type ? details('Example data.object', type.example) : null));
  return h('section', {},
    h('h1', {}, 'Event catalog'),
    h('p', {}, 'The events you can subscribe an endpoint to. ',
      catalog.infer_events ? 'Other changes made through the API are also sent, as <resource>.created, .updated or .deleted.' : ''),
    h('ul', { class: 'cards' }, items));
}
