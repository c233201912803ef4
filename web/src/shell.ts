// The page's static markup and the keyboard help.

export const HELP: Array<[string, string]> = [
  ["V", "navigate (click moves the crosshair)"],
  ["P / N", "positive / negative click tool (sent to the model)"],
  ["B / E / F", "brush / eraser / fill (2-D region)"],
  ["U", "ruler: drag to measure a distance (Esc removes all measurements)"],
  ["X", "box prompt: drag a rectangle around the structure (Ctrl+drag or '3-D box': ±N slices)"],
  ["Q", "lasso prompt: draw a closed contour around the structure on a slice"],
  ["W", "scribbles: strokes of the class (Alt+drag: background), as model guidance or graph cut"],
  ["[ / ]", "smaller / larger brush"],
  ["I", "interpolate the chosen class between its labelled slices (view under the mouse)"],
  ["S", "brush: toggle 2-D disk / 3-D sphere"],
  ["1 … 9", "choose the label class"],
  ["Ctrl+Z / Ctrl+Y", "undo / redo (clicks, prompts and brush strokes)"],
  ["Ctrl+S / Ctrl+Shift+S", "save as draft / final"],
  ["R", "run the chosen model on this image"],
  ["Shift+N", "next image from the queue"],
  ["L", "show / hide the label"],
  ["O", "show / hide the reference overlay"],
  ["M A C G D", "views: all / axial / coronal / sagittal / 3-D"],
  ["Wheel / ↑ ↓", "scroll slices of the view under the mouse; Ctrl+wheel zooms"],
  ["+ / − / 0", "zoom in / out / reset"],
  ["Right or middle drag", "pan"],
  ["Shift+drag", "window / level"],
  ["?", "this help"],
];

export const SHELL = `
<header>
  <span class="brand">segloop</span>
  <button id="next" title="Open the next image to annotate (Shift+N)">Next image ▸</button>
  <label>Queue <select id="strategy" title="How the next image is chosen"></select></label>
  <span class="sep"></span>
  <label>Model <select id="model"></select></label>
  <button id="run-model" title="Automatic segmentation of this image with the chosen model (R)">Run model</button>
  <span class="grow"></span>
  <span id="live" class="live" title="live updates">●</span>
  <span id="me" class="me"></span>
  <button id="help-open" title="Keyboard shortcuts (?)">?</button>
</header>
<main>
  <aside id="left">
    <div class="phead"><b>Worklist</b>
      <select id="wl-filter" title="Show images by label state"><option value="">all</option><option value="none">no label</option><option value="draft">draft</option><option value="final">final</option></select>
    </div>
    <div class="wl-search"><input id="wl-search" type="search" placeholder="Search name or description" title="Images whose name or series description contains this text (* and ? are wildcards)" maxlength="64"></div>
    <div id="scoring" class="scoring" hidden><span id="scoring-text"></span><progress id="scoring-bar" max="1" value="0"></progress></div>
    <div class="scroll"><table id="worklist" class="grid"><thead></thead><tbody></tbody></table></div>
    <div class="pager"><button id="wl-prev" class="small">◂</button><span id="wl-count"></span><button id="wl-next" class="small">▸</button></div>
    <div class="dropzone">
      Drop NIfTI files, DICOM folders or zips here, or
      <label class="filebtn">choose files<input id="file-input" type="file" multiple accept=".nii,.gz,.zip,.dcm,.nrrd,application/zip" hidden></label>
      <label class="filebtn">a DICOM folder<input id="folder-input" type="file" webkitdirectory multiple hidden></label>
    </div>
    <div id="uploads"></div>
  </aside>
  <section id="center">
    <div class="toolbar">
      <span class="group">
        <button data-view="multi" title="All views (M)">All</button><button data-view="axial" title="Axial (A)">Ax</button><button data-view="coronal" title="Coronal (C)">Cor</button><button data-view="sagittal" title="Sagittal (G)">Sag</button><button data-view="render" title="3-D (D)">3D</button>
      </span>
      <span class="group"><button id="zoom-out" title="Zoom out (−)">−</button><button id="zoom-in" title="Zoom in (+)">+</button><button id="zoom-reset" title="Reset zoom and pan (0)">⟲</button></span>
      <span class="group">W/L <select id="wl-preset" title="Window/level preset"></select>
        <input id="wl-center" type="number" step="any" title="window centre (level)"><input id="wl-width" type="number" step="any" title="window width"></span>
    </div>
    <div id="image-info" class="imagebar" title="The open image"></div>
    <div id="fit-warning" class="fitwarn" role="status" hidden></div>
    <div id="viewer-wrap"><canvas id="gl" tabindex="0"></canvas><canvas id="preview" hidden></canvas><canvas id="marks"></canvas></div>
    <div class="statusbar"><span id="status">Choose an image from the worklist.</span><span id="location"></span></div>
  </section>
  <aside id="right">
    <nav class="tabs"><button data-tab="edit" class="on">Edit</button><button data-tab="models">Models</button><button data-tab="evaluate">Evaluate</button></nav>
    <div id="tab-edit" class="tab">
      <h3>Segments</h3><div id="classes" class="classes"></div>
      <h3>Tool</h3>
      <div id="tools" class="tools">
        <button data-tool="navigate" title="Navigate (V)">Navigate</button>
        <button data-tool="positive" title="Positive click: add the class here (P)">+ Click</button>
        <button data-tool="negative" title="Negative click: not this class here (N)">− Click</button>
        <button data-tool="brush" title="Brush (B)">Brush</button>
        <button data-tool="eraser" title="Eraser (E)">Eraser</button>
        <button data-tool="fill" title="Fill a 2-D region (F)">Fill</button>
        <button data-tool="ruler" title="Measure a distance (U)">Ruler</button>
        <!-- tools added with registerTool() (tools.ts) append their buttons here -->
      </div>
      <div class="row">Size <input id="brush-size" type="range" min="1" max="30" value="3"><span id="brush-size-v">3</span>
        <label title="3-D sphere instead of a 2-D disk (S)"><input id="sphere" type="checkbox"> sphere</label></div>
      <div class="row" title="The brush paints only voxels whose image intensity lies in this range">
        <label><input id="brush-thr" type="checkbox"> only</label>
        <input id="brush-thr-lo" type="number" step="any" value="0" title="lowest intensity painted"> –
        <input id="brush-thr-hi" type="number" step="any" value="1000" title="highest intensity painted"></div>
      <div id="rulers" class="rulers"></div>
      <div class="row"><button id="undo" title="Undo (Ctrl+Z)">↶ Undo</button><button id="redo" title="Redo (Ctrl+Y)">↷ Redo</button>
        <button id="interp" title="Fill the slices between labelled slices of the chosen class, along the view under the mouse (I)">Interpolate</button></div>
      <div id="edit-state" class="muted"></div>
      <div class="row"><button id="save-draft" class="primary" title="Save as draft (Ctrl+S)">Save draft</button><button id="save-final" title="Save as final (Ctrl+Shift+S)">Save final</button></div>
      <h3>Layers</h3>
      <div class="layers">
        <label><input id="show-label" type="checkbox" checked> label</label><label title="Draw each region's border instead of filling it"><input id="outline" type="checkbox"> outline</label>
        <input id="opacity" type="range" min="0" max="1" step="0.05" value="0.5" title="label opacity">
        <label title="A marker at each click of the session (class colour; undo removes it)"><input id="show-clicks" type="checkbox" checked> clicks</label><span></span><span></span>
        <label title="A saved revision, e.g. the reference (final) label"><input id="ov-reference-on" type="checkbox" data-slot="reference"> reference</label>
        <select id="ov-reference" data-slot="reference"></select>
        <input id="ov-reference-opacity" type="range" min="0" max="1" step="0.05" value="0.5" data-slot="reference" title="reference opacity">
        <label title="The automatic segmentation of a model"><input id="ov-prediction-on" type="checkbox" data-slot="prediction"> prediction</label>
        <select id="ov-prediction" data-slot="prediction"></select>
        <input id="ov-prediction-opacity" type="range" min="0" max="1" step="0.05" value="0.5" data-slot="prediction" title="prediction opacity">
        <label title="Where an evaluation found agreement, false positives and false negatives"><input id="ov-discrepancy-on" type="checkbox" data-slot="discrepancy"> discrepancy</label>
        <select id="ov-discrepancy" data-slot="discrepancy"></select>
        <input id="ov-discrepancy-opacity" type="range" min="0" max="1" step="0.05" value="0.7" data-slot="discrepancy" title="discrepancy opacity">
      </div>
      <div id="overlay-legend" class="legend muted"></div>
      <h3>Revisions</h3>
      <div class="scroll small-table"><table id="revisions" class="grid"><thead><tr><th>Revision</th><th>Author · source</th><th>Time</th><th></th></tr></thead><tbody></tbody></table></div>
      <div class="row"><button id="export-rev" class="small" title="Download the latest saved revision">Export saved (NIfTI)</button><button id="export-view" class="small" title="Download the label as shown, unsaved edits included">Export view (NIfTI)</button>
        <button id="export-seg" class="small" title="Download the latest saved revision as DICOM SEG (images imported from DICOM)">Export DICOM SEG</button>
        <button id="send-pacs" class="small" hidden title="Store the shown final revision in the PACS as a DICOM segmentation, in the image's study">Send to PACS</button></div>
      <div id="export-note" class="muted"></div>
      <div id="pacs-status" class="muted" role="status" aria-live="polite"></div>
    </div>
    <div id="tab-models" class="tab" hidden>
      <h3>Models</h3><div id="models"></div>
      <h3>Jobs <small id="chart-title" class="muted"></small></h3>
      <canvas id="chart"></canvas>
      <div id="jobs"></div>
      <h3>Train</h3>
      <form id="train-form" class="form">
        <label>Model name <input id="tr-name" value="demo" required><small>a new name creates a model; an existing one gets a new version</small></label>
        <label>Architecture <select id="tr-arch"></select><small>the network; unet is a good default</small></label>
        <label>Epochs <input id="tr-epochs" type="number" min="1" value="20"><small>passes over the labelled images</small></label>
        <label>Steps per epoch <input id="tr-steps" type="number" min="1" placeholder="auto"><small>blank: all training images once</small></label>
        <label>Batch size <input id="tr-batch" type="number" min="1" value="4"><small>patches per step; lower it if memory runs out</small></label>
        <label>Learning rate <input id="tr-lr" type="number" step="any" value="0.002"><small>step size of the optimiser</small></label>
        <label>Validation fraction <input id="tr-val" type="number" step="any" value="0.2"><small>share of final labels held out to measure Dice</small></label>
        <label>Time limit (min) <input id="tr-minutes" type="number" step="any" placeholder="none"><small>stop early and keep the best state</small></label>
        <label class="check"><input id="tr-finetune" type="checkbox"> start from the current version (fine-tune)</label>
        <button type="submit" class="primary">Start training</button>
      </form>
    </div>
    <div id="tab-evaluate" class="tab" hidden>
      <h3>Evaluate this image</h3>
      <div class="form">
        <label>Compare <select id="ev-pred"></select></label>
        <label>against <select id="ev-ref"></select></label>
        <label class="check"><input id="ev-show" type="checkbox" checked> show the discrepancy map</label>
        <div class="row"><button id="ev-run" class="primary">Evaluate</button></div>
      </div>
      <div id="ev-result"></div>
      <h3>History</h3>
      <div class="scroll small-table"><table id="ev-history" class="grid"><thead><tr><th>When</th><th>Compared</th><th>Ref.</th><th>Dice</th><th></th></tr></thead><tbody></tbody></table></div>
      <h3>The model on the whole dataset</h3>
      <div class="form">
        <label class="check" title="Leave out the images the chosen model version was trained or validated on"><input id="dev-unseen" type="checkbox"> only images the model never saw</label>
        <div class="row"><button id="ev-model-job" title="Evaluate the chosen model on the final labels (background job)">Evaluate the model</button>
          <select id="dev-list" title="Earlier whole-dataset evaluations"></select></div>
      </div>
      <div id="dev-result"></div>
    </div>
  </aside>
</main>
<div id="notices" aria-live="polite"></div>
<dialog id="conflict">
  <h2>Someone saved this label meanwhile</h2>
  <div id="conflict-text"></div>
  <p>Your changes are still here. What should happen?</p>
  <div class="row">
    <button id="conflict-keep" class="primary">Keep mine as a new revision on top</button>
    <button id="conflict-reload">Reload theirs (discard mine)</button>
    <button id="conflict-show">Show theirs for comparison</button>
    <button id="conflict-cancel">Cancel</button>
  </div>
</dialog>
<dialog id="help"><h2>Keyboard shortcuts</h2><table class="grid"><tbody id="help-keys"></tbody></table><button id="help-close">Close</button></dialog>
<dialog id="login"><h2>Sign in to segloop</h2>
  <form id="login-form" class="form"><label>User <input id="login-user" autocomplete="username" required></label>
  <label>Password <input id="login-pass" type="password" autocomplete="current-password" required></label>
  <button class="primary" type="submit">Sign in</button></form></dialog>
`;
