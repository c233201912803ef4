// The last picture of the 3-D tile of the four-view layout, kept in a framebuffer: while the
// label is being edited the tile is copied back from here (blitFramebuffer) instead of being
// ray-cast again on every frame (viewer.ts re-casts it once editing pauses). Positions are
// canvas pixels, [left, top, width, height] with a top-left origin as NiiVue passes them.

export class Tile3DCache {
  private fb: WebGLFramebuffer | null = null;
  private rb: WebGLRenderbuffer | null = null;
  private w = 0;
  private h = 0;
  private at: number[] = [];

  constructor(private gl: WebGL2RenderingContext) {}

  drop(): void {
    if (this.fb) this.gl.deleteFramebuffer(this.fb);
    if (this.rb) this.gl.deleteRenderbuffer(this.rb);
    this.fb = this.rb = null;
    this.at = [];
  }

  /** Copy the 3-D tile just drawn at `ltwh` into the cache. */
  save(ltwh: number[]): void {
    const gl = this.gl;
    const [x, top, w, h] = ltwh.map(Math.round);
    const y = gl.drawingBufferHeight - top - h;
    if (!this.fb || this.w !== w || this.h !== h) {
      this.drop();
      const fb = gl.createFramebuffer(), rb = gl.createRenderbuffer();
      if (!fb || !rb) return;
      gl.bindRenderbuffer(gl.RENDERBUFFER, rb);
      gl.renderbufferStorage(gl.RENDERBUFFER, gl.RGBA8, w, h);
      gl.bindFramebuffer(gl.FRAMEBUFFER, fb);
      gl.framebufferRenderbuffer(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.RENDERBUFFER, rb);
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
      this.fb = fb;
      this.rb = rb;
      this.w = w;
      this.h = h;
    }
    this.blit(null, this.fb, [x, y, x + w, y + h], [0, 0, w, h]);
    this.at = [x, y];
  }

  /** Show the cached tile at `ltwh`; false when the cache does not fit there (then ray-cast). */
  restore(ltwh: number[]): boolean {
    const gl = this.gl;
    const [x, top, w, h] = ltwh.map(Math.round);
    const y = gl.drawingBufferHeight - top - h;
    if (!this.fb || this.w !== w || this.h !== h || this.at[0] !== x || this.at[1] !== y) return false;
    this.blit(this.fb, null, [0, 0, w, h], [x, y, x + w, y + h]);
    return true;
  }

  private blit(from: WebGLFramebuffer | null, to: WebGLFramebuffer | null, src: number[], dst: number[]): void {
    const gl = this.gl;
    const scissor = gl.isEnabled(gl.SCISSOR_TEST);
    if (scissor) gl.disable(gl.SCISSOR_TEST);
    gl.bindFramebuffer(gl.READ_FRAMEBUFFER, from);
    gl.bindFramebuffer(gl.DRAW_FRAMEBUFFER, to);
    gl.blitFramebuffer(src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], gl.COLOR_BUFFER_BIT, gl.NEAREST);
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    if (scissor) gl.enable(gl.SCISSOR_TEST);
  }
}

/**
 * When the 3-D tile, shown from its cache while the label changes, is ray-cast again. A ray-cast
 * is long in software WebGL (0.3-0.7 s for a 256x256x128 volume) and cannot be interrupted once
 * issued, and while it runs the page's requests and answers wait for it. So it waits until
 * editing has paused for `delayMs` (no label change, no press on the canvas) and no session
 * request (a click, a pushed stroke, undo/redo) is on its way — a click then never queues
 * behind it, whatever the pace of clicking.
 */
export class Lazy3D {
  delayMs = 350;
  private timer = 0;
  private due = false; // a label change was drawn with the cached tile
  private holds = 0; // session requests on their way
  private lastInput = -Infinity;

  constructor(private recast: () => void) {}

  /** The tile shown is the cached one, older than the label: ray-cast it once editing pauses. */
  schedule(): void {
    this.due = true;
    this.arm(this.delayMs);
  }

  /** The tile was ray-cast anew (whatever the reason): nothing left to catch up. */
  done(): void {
    this.due = false;
    clearTimeout(this.timer);
  }

  /** The user pressed on the canvas (a click or a stroke begins): hold the ray-cast back. */
  input(): void {
    this.lastInput = performance.now();
  }

  /** A session request is on its way: no ray-cast until `release`. */
  hold(): void {
    this.holds++;
  }

  release(): void {
    this.holds = Math.max(0, this.holds - 1);
    if (!this.holds && this.due) this.arm(this.delayMs);
  }

  /** A ray-cast is owed (the 3-D tile shows an older label than the 2-D tiles). */
  get pending(): boolean {
    return this.due;
  }

  private arm(ms: number): void {
    clearTimeout(this.timer);
    this.timer = window.setTimeout(() => this.fire(), ms);
  }

  private fire(): void {
    if (!this.due || this.holds) return; // release() re-arms
    const quiet = performance.now() - this.lastInput;
    if (quiet < this.delayMs) {
      this.arm(this.delayMs - quiet);
      return;
    }
    this.due = false;
    this.recast();
  }
}
